// Runs a TF.js graph model from disk in Node with the wasm backend (no tfjs-node, no network).
//   node run_tfjs.mjs predict MODEL_DIR IMAGES.bin N H W OUT.bin   uint8 NHWC in, float32 probs out
//   node run_tfjs.mjs latency MODEL_DIR H W RUNS WARMUP BATCH      prints JSON timings (ms)
import fs from 'node:fs';
import path from 'node:path';
import { createRequire } from 'node:module';
import * as tf from '@tensorflow/tfjs';
import { getThreadsCount, setWasmPaths } from '@tensorflow/tfjs-backend-wasm';

const require = createRequire(import.meta.url);

function diskHandler(modelDir) {
  // file:// loading exists only in tfjs-node; this reads model.json and its shards directly.
  return {
    async load() {
      const model = JSON.parse(fs.readFileSync(path.join(modelDir, 'model.json'), 'utf8'));
      const weightSpecs = [];
      const buffers = [];
      for (const group of model.weightsManifest) {
        weightSpecs.push(...group.weights);
        for (const shard of group.paths) buffers.push(fs.readFileSync(path.join(modelDir, shard)));
      }
      const weightData = new Uint8Array(Buffer.concat(buffers)).buffer;
      return {
        modelTopology: model.modelTopology,
        format: model.format,
        generatedBy: model.generatedBy,
        convertedBy: model.convertedBy,
        signature: model.signature,
        userDefinedMetadata: model.userDefinedMetadata,
        modelInitializer: model.modelInitializer,
        weightSpecs,
        weightData,
      };
    },
  };
}

async function setup(modelDir) {
  const wasmDir = path.dirname(require.resolve('@tensorflow/tfjs-backend-wasm/dist/tfjs-backend-wasm.wasm'));
  setWasmPaths(wasmDir + path.sep);
  const backend = process.env.TFJS_BACKEND || 'wasm';
  if (!(await tf.setBackend(backend))) throw new Error(`backend ${backend} is not available`);
  await tf.ready();
  return tf.loadGraphModel(diskHandler(modelDir));
}

function probabilities(model, input) {
  return tf.tidy(() => model.predict(input));
}

async function predict([modelDir, imagesPath, n, h, w, outPath]) {
  const model = await setup(modelDir);
  [n, h, w] = [n, h, w].map(Number);
  const pixels = new Uint8Array(fs.readFileSync(imagesPath));
  const batchSize = 32;
  const chunks = [];
  for (let start = 0; start < n; start += batchSize) {
    const count = Math.min(batchSize, n - start);
    const slice = pixels.subarray(start * h * w * 3, (start + count) * h * w * 3);
    const input = tf.tensor4d(Float32Array.from(slice), [count, h, w, 3]);
    const output = probabilities(model, input);
    chunks.push(await output.data());
    input.dispose();
    output.dispose();
  }
  const total = chunks.reduce((sum, c) => sum + c.length, 0);
  const flat = new Float32Array(total);
  let offset = 0;
  for (const c of chunks) { flat.set(c, offset); offset += c.length; }
  fs.writeFileSync(outPath, Buffer.from(flat.buffer));
  console.log(JSON.stringify({ backend: tf.getBackend(), images: n }));
}

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function latency([modelDir, h, w, runs, warmup, batch]) {
  const model = await setup(modelDir);
  [h, w, runs, warmup, batch] = [h, w, runs, warmup, batch].map(Number);
  const input = tf.randomUniform([batch, h, w, 3], 0, 255);
  for (let i = 0; i < warmup; i++) (await probabilities(model, input).data());
  const times = [];
  for (let i = 0; i < runs; i++) {
    const start = performance.now();
    const output = probabilities(model, input);
    await output.data();
    times.push(performance.now() - start);
    output.dispose();
  }
  times.sort((a, b) => a - b);
  console.log(JSON.stringify({
    backend: tf.getBackend(), runtime: 'tfjs-node-wasm',
    simd: await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT'),
    threads: tf.getBackend() === 'wasm' ? getThreadsCount() : 1, batch, runs,
    p50_ms: percentile(times, 50), p90_ms: percentile(times, 90),
  }));
}

const [command, ...args] = process.argv.slice(2);
const commands = { predict, latency };
if (!commands[command]) {
  console.error('usage: run_tfjs.mjs predict|latency ...');
  process.exit(2);
}
commands[command](args).catch((error) => {
  console.error(`tfjs runtime error: ${error.message}`);
  process.exit(1);
});
