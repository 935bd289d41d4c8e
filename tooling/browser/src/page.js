// The page's script: ic in the browser, from the bundle alone. It fetches a qcow2 image, opens it in memory,
// prints its map as `qemu-img map --output=json` would, converts it in place to QED, maps the result, and
// posts the converted bytes back to the server that served it.
import { MemoryIO, Registry, convertInPlace, mapJson, qcow2Driver, qedDriver, qemuMapEntries } from './ic-browser.js';

async function mapOf(driver, io) {
  const image = await driver.open(io);
  try {
    return mapJson(await qemuMapEntries(image));
  } finally {
    await image.close();
  }
}

async function roundTrip() {
  const response = await fetch('/image.qcow2');
  if (!response.ok) throw new Error(`GET /image.qcow2: ${response.status}`);
  const io = new MemoryIO(new Uint8Array(await response.arrayBuffer()), 'disk.qcow2');
  const registry = new Registry([qcow2Driver, qedDriver]);
  const source = await registry.probe(io);
  const sourceMap = await mapOf(source, io);
  const report = await convertInPlace({ io, source, target: registry.get('qed') });
  const target = await registry.probe(io);
  const targetMap = await mapOf(target, io);
  const bytes = io.snapshot();
  const posted = await fetch('/result', { method: 'POST', body: bytes, headers: { 'content-type': 'application/octet-stream' } });
  if (!posted.ok) throw new Error(`POST /result: ${posted.status}`);
  return {
    sourceFormat: source.name,
    targetFormat: target.name,
    sourceMap,
    targetMap,
    size: bytes.length,
    report: { clustersKept: report.clustersKept, clustersRelocated: report.clustersRelocated, commit: report.commit, verified: report.verified },
    // Nothing Node-like leaked into the page: no process, no Buffer, no require.
    nodeGlobals: ['process', 'Buffer', 'require', 'global'].filter((name) => name in globalThis),
    userAgent: navigator.userAgent,
  };
}

globalThis.icRoundTrip = roundTrip;
document.title = 'ic ready';
