// Runs a TF.js graph model from disk in Node with the wasm backend (no tfjs-node, no network).
//   node run_tfjs.mjs predict MODEL_DIR INPUT.bin DTYPE SHAPE OUT.bin   float32 probs out
//   node run_tfjs.mjs latency MODEL_DIR DTYPE SHAPE RUNS WARMUP BATCH    prints JSON timings (ms)
// DTYPE is uint8 (images: pixels, fed as float32) or int32 (a text model's token ids); SHAPE is
// one example's shape, comma-separated (224,224,3 or 128).
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

function exampleShape(text) {
  return text.split(',').map(Number);
}

function inputTensor(values, dtype, shape) {
  // pixels go in as float32 (the graph normalizes them), token ids as int32
  return dtype === 'int32' ? tf.tensor(values, shape, 'int32') : tf.tensor(Float32Array.from(values), shape);
}

function readExamples(file, dtype) {
  const bytes = fs.readFileSync(file);
  if (dtype === 'uint8') return new Uint8Array(bytes);
  if (dtype === 'int32') return new Int32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4);
  throw new Error(`unknown input dtype ${dtype}`);
}

async function predict([modelDir, inputPath, dtype, shapeText, outPath]) {
  const model = await setup(modelDir);
  const shape = exampleShape(shapeText);
  const size = shape.reduce((a, b) => a * b, 1);
  const values = readExamples(inputPath, dtype);
  const n = values.length / size;
  const batchSize = 32;
  const chunks = [];
  for (let start = 0; start < n; start += batchSize) {
    const count = Math.min(batchSize, n - start);
    const input = inputTensor(values.subarray(start * size, (start + count) * size), dtype, [count, ...shape]);
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
  console.log(JSON.stringify({ backend: tf.getBackend(), examples: n }));
}

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

async function latency([modelDir, dtype, shapeText, runs, warmup, batch]) {
  const model = await setup(modelDir);
  [runs, warmup, batch] = [runs, warmup, batch].map(Number);
  const shape = [batch, ...exampleShape(shapeText)];
  // random pixels, or random token ids below 256 (every position a token: the longest text)
  const input = dtype === 'int32' ? tf.randomUniform(shape, 1, 256, 'int32') : tf.randomUniform(shape, 0, 255);
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
