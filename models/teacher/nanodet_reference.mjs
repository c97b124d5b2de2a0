// The reference runtime for the NanoDet port: runs a TF.js graph model with TensorFlow.js itself.
//
//   node models/teacher/nanodet_reference.mjs --model DIR/nanodet.json --input X.f32 --out DIR \
//        [--shape 1,3,416,416] [--nodes NAME,NAME,...]
//
// Owns only this: load model.json and its weight shards from disk (a custom IOHandler via
// tf.io.fromMemory, no HTTP), run the pure-JS CPU backend of @tensorflow/tfjs (pinned in
// package.json next to this file; installed by `npm ci`) on one raw little-endian float32 input,
// and write every signature output plus any named intermediate node as raw float32 files.
// What it writes, in --out: one `<index>.f32` per tensor and `manifest.json`:
//   {"backend": "cpu", "tfjs": "4.22.0", "tensors": [{"name", "file", "shape"}, ...]}
// It imports nothing from the Python project; the tests (tests/models/test_nanodet.py) call it.

import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import * as tf from "@tensorflow/tfjs";

function parseArgs(argv) {
  const args = { shape: "1,3,416,416", nodes: "" };
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, "");
    if (!(key in { model: 1, input: 1, out: 1, shape: 1, nodes: 1 }) || i + 1 >= argv.length) {
      throw new Error(`unknown or incomplete argument ${argv[i]}`);
    }
    args[key] = argv[i + 1];
  }
  for (const required of ["model", "input", "out"]) {
    if (!args[required]) throw new Error(`--${required} is required`);
  }
  return args;
}

function loadHandler(modelPath) {
  // The same artifacts tf.io.http would fetch, read from disk: the topology and the shards of
  // every manifest group concatenated in order, with the specs in that same order.
  const model = JSON.parse(readFileSync(modelPath, "utf8"));
  const specs = [];
  const buffers = [];
  for (const group of model.weightsManifest) {
    specs.push(...group.weights);
    for (const rel of group.paths) buffers.push(readFileSync(join(dirname(modelPath), rel)));
  }
  const joined = Buffer.concat(buffers);
  const weightData = joined.buffer.slice(joined.byteOffset, joined.byteOffset + joined.byteLength);
  return tf.io.fromMemory({
    modelTopology: model.modelTopology,
    weightSpecs: specs,
    weightData,
    format: model.format,
    generatedBy: model.generatedBy,
    convertedBy: model.convertedBy,
    signature: model.signature,
  });
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  await tf.setBackend("cpu");
  await tf.ready();
  const model = await tf.loadGraphModel(loadHandler(args.model));

  const shape = args.shape.split(",").map(Number);
  const raw = readFileSync(args.input);
  const count = shape.reduce((a, b) => a * b, 1);
  if (raw.byteLength !== count * 4) {
    throw new Error(`${args.input}: ${raw.byteLength} bytes, but shape ${shape} needs ${count * 4}`);
  }
  const values = new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
  const input = tf.tensor(values, shape, "float32");

  const inputName = Object.keys(model.signature.inputs)[0].split(":")[0];
  const outputs = Object.keys(model.signature.outputs).map((k) => k.split(":")[0]).sort();
  const nodes = args.nodes ? args.nodes.split(",") : [];
  const names = [...outputs, ...nodes];
  const results = model.execute({ [inputName]: input }, names);

  mkdirSync(args.out, { recursive: true });
  const tensors = [];
  for (let i = 0; i < names.length; i++) {
    const tensor = Array.isArray(results) ? results[i] : results;
    const data = await tensor.data();
    const file = `${i}.f32`;
    writeFileSync(join(args.out, file), Buffer.from(data.buffer, data.byteOffset, data.byteLength));
    tensors.push({ name: names[i], file, shape: tensor.shape });
  }
  const manifest = { backend: tf.getBackend(), tfjs: tf.version.tfjs, tensors };
  writeFileSync(join(args.out, "manifest.json"), JSON.stringify(manifest, null, 1));
  console.log(`nanodet_reference: ${names.length} tensors on backend ${manifest.backend} (tfjs ${manifest.tfjs}) -> ${args.out}`);
}

main().catch((error) => {
  console.error(`nanodet_reference: ${error.message}`);
  process.exit(1);
});
