import io
import pickle

import numpy as np
import pytest

from factory import backbones, classifier
from factory.backbones import efficientnet_lite
from factory.backbones.torch_weights import load_state_dict
from factory.specs import BackboneSpec
from targets.errors import FactoryError
from targets.tf_setup import keras, tf

ESPRESSO = 967
CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_bundled_weights_read_without_torch():
    state = load_state_dict(efficientnet_lite.weights_path("lite0"))
    assert len(state) == 296
    assert sum(v.size for v in state.values()) == 4_694_073
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)


def test_weights_reader_refuses_to_run_pickled_code(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    buffer = io.BytesIO()
    for obj in (0x1950A86A20F9469CFC6C, 1001, {}, Exploit()):
        pickle.dump(obj, buffer, protocol=2)
    path = tmp_path / "evil.pth"
    path.write_bytes(buffer.getvalue())
    with pytest.raises(FactoryError, match="refusing to load .*print"):
        load_state_dict(path)


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_efficientnet_lite_port_classifies_real_photos(variant):
    import skimage.data

    size = efficientnet_lite.VARIANTS[variant][2]
    inputs = keras.Input((size, size, 3))
    normalized = keras.layers.Rescaling(1 / 128, offset=-127 / 128)(inputs)
    model = keras.Model(inputs, efficientnet_lite.build(normalized, variant, include_top=True))
    photos = np.stack([
        tf.image.resize(getattr(skimage.data, name)(), (size, size)).numpy() for name in ("coffee", "chelsea")
    ])
    probs = tf.nn.softmax(model(photos)).numpy()
    assert probs[0].argmax() == ESPRESSO and probs[0].max() > 0.5
    assert probs[1].argmax() in CAT_CLASSES


def test_registry_entry_carries_size_and_normalization():
    backbone = backbones.resolve(BackboneSpec("efficientnet_lite0", 96))
    assert backbone.input_size == 96
    assert backbone.scale * 0 + backbone.offset == pytest.approx(-127 / 128)
    # pixel 255 lands at the top of the range the weights expect: (255 - 127) / 128
    assert backbone.scale * 255 + backbone.offset == pytest.approx(1.0)
    assert backbone.scale == pytest.approx(1 / 128)
    assert backbones.resolve(BackboneSpec("efficientnet_lite0")).input_size == 224


@pytest.mark.parametrize(
    "spec, weights, message",
    [
        ("resnet9000", None, "unknown backbone 'resnet9000': choose one of"),
        ("mobilenet_v2", None, "needs --weights FILE"),
        ("mobilenet_v2", "/nonexistent.h5", "no such file"),
        ("hub:/nonexistent/dir", None, "no saved_model.pb in that folder"),
    ],
)
def test_bad_backbone_specs_get_clear_errors(spec, weights, message):
    with pytest.raises(FactoryError, match=message):
        backbones.resolve(BackboneSpec(spec, 96, weights))


def test_keras_application_loads_a_local_weights_file(tmp_path):
    # Only the loading path is under test: the file's values must arrive in our graph unchanged.
    reference = keras.applications.MobileNetV2(input_shape=(96, 96, 3), include_top=False, weights=None, pooling="avg")
    reference.set_weights([w + 0.01 * i for i, w in enumerate(reference.get_weights())])
    path = tmp_path / "mobilenet_v2_notop.h5"
    reference.save_weights(path)
    model = classifier.build(backbones.resolve(BackboneSpec("mobilenet_v2", 96, str(path))), 3)
    x = np.random.default_rng(0).uniform(0, 255, (2, 96, 96, 3)).astype("float32")
    expected = reference.predict(x / 127.5 - 1, verbose=0)
    np.testing.assert_allclose(model.feature_model.predict(x, verbose=0), expected, rtol=1e-4, atol=1e-4)


def test_keras_application_rejects_weights_of_another_shape(tmp_path):
    other = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, include_top=False, weights=None)
    path = tmp_path / "mobilenet_v2_035_notop.h5"
    other.save_weights(path)
    with pytest.raises(FactoryError, match="does not fit mobilenet_v2"):
        classifier.build(backbones.resolve(BackboneSpec("mobilenet_v2", 96, str(path))), 3)
