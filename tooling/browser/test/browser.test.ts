/**
 * ic in a browser: the esbuild bundle of @ic/core (engine), @ic/qcow2, @ic/qed and @ic/qemu-output for the
 * browser contains no Node built-in, and headless Chromium (Debian's, installed when missing; a failure in CI
 * when it cannot be) converts a qemu-made qcow2 to QED in memory. qemu-img judges the result.
 */
import { createServer, type Server } from 'node:http';
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import * as esbuild from 'esbuild';
import { chromium, type Browser } from 'playwright-core';
import { qemuCreate, qemuIo, requireQemu, run, sha256File, tempDir } from '@ic/test-utils';
import { bundle, checkOtherDrivers, noNodeBuiltins, sizes } from '../src/bundle.mjs';
import { CHROMIUM_ARGS, ensureChromium, type ChromiumState } from '../src/chromium.js';

const scratch = tempDir('ic-browser-');
const bundleFile = scratch.path('ic-browser.js');
const image = scratch.path('disk.qcow2');
const result = scratch.path('disk.qed');
const page = readFileSync(fileURLToPath(new URL('../src/page.js', import.meta.url)));

let server: Server | undefined;
let browser: Browser | undefined;
let chromiumState: ChromiumState | undefined;
let posted: Buffer | undefined;

// Built once, on first use inside a test (a failure in a hook would not count as a failed test).
let building: Promise<esbuild.BuildResult & { metafile: esbuild.Metafile }> | undefined;
const built = () => (building ??= bundle({ outfile: bundleFile }));

function serve(): Promise<string> {
  const files: Record<string, { type: string; body: () => Buffer }> = {
    '/': { type: 'text/html', body: () => Buffer.from('<!doctype html><title>ic</title><link rel="icon" href="data:,"><script type="module" src="/page.js"></script>\n') },
    '/page.js': { type: 'text/javascript', body: () => page },
    '/ic-browser.js': { type: 'text/javascript', body: () => readFileSync(bundleFile) },
    '/image.qcow2': { type: 'application/octet-stream', body: () => readFileSync(image) },
  };
  server = createServer((request, response) => {
    if (request.method === 'POST' && request.url === '/result') {
      const chunks: Buffer[] = [];
      request.on('data', (chunk: Buffer) => chunks.push(chunk));
      request.on('end', () => {
        posted = Buffer.concat(chunks);
        response.writeHead(204).end();
      });
      return;
    }
    const file = request.method === 'GET' ? files[request.url ?? ''] : undefined;
    if (!file) return void response.writeHead(404).end();
    response.writeHead(200, { 'content-type': file.type, 'cache-control': 'no-store' }).end(file.body());
  });
  return new Promise((resolve) => server!.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${(server!.address() as AddressInfo).port}`)));
}

beforeAll(() => {
  requireQemu();
  // Data at a few places: the first cluster (under QED's header, so it moves), a run across cluster
  // boundaries, a partial cluster, a zero cluster and data near the end of the disk.
  qemuCreate(image, 'qcow2', '64M', { o: 'cluster_size=65536' });
  qemuIo(image, 'qcow2', ['write -P 0x11 0 64k', 'write -P 0x22 1M 192k', 'write -P 0x33 5000k 4k', 'write -z 8M 64k', 'write -P 0x44 63M 64k']);
  chromiumState = ensureChromium((line) => console.log(line));
}, 20 * 60_000);

afterAll(async () => {
  await browser?.close();
  await new Promise((resolve) => (server ? server.close(resolve) : resolve(undefined)));
  scratch.cleanup();
});

describe('the browser bundle', () => {
  test('holds the engine, qcow2, QED and the qemu formatters from their dist/, and no Node built-in', async () => {
    const inputs = Object.keys((await built()).metafile.inputs);
    for (const pkg of ['packages/core/dist/', 'packages/qcow2/dist/', 'packages/qed/dist/', 'libs/qemu-output/dist/']) {
      expect(inputs.some((input) => input.includes(pkg)), pkg).toBe(true);
    }
    expect(inputs.filter((input) => !/(packages\/(core|qcow2|qed)|libs\/qemu-output)\/dist\/|(^|\/)entry\.js$/.test(input))).toEqual([]);
    const output = Object.values((await built()).metafile.outputs).find((o) => o.entryPoint !== undefined)!;
    expect(output.imports).toEqual([]);
    expect(output.exports).toEqual(expect.arrayContaining(['convertInPlace', 'MemoryIO', 'Registry', 'qcow2Driver', 'qedDriver', 'mapJson', 'qemuMapEntries']));
    const size = sizes(readFileSync(bundleFile));
    console.log(`ic-browser.js: ${size.bytes} bytes minified, ${size.gzip} bytes gzip`);
    expect(size.bytes).toBeGreaterThan(0);
    // The other first-party drivers bundle for the browser as well.
    const others = await checkOtherDrivers();
    expect(Object.keys(others.metafile.inputs).some((input) => input.includes('packages/vmdk/dist/'))).toBe(true);
  });

  test('fails to build, naming the importer, when anything imports a Node built-in', async () => {
    for (const contents of ["export * from '@ic/core/node';", "import { readFileSync } from 'node:fs'; export const f = readFileSync;"]) {
      const attempt = esbuild.build({
        stdin: { contents, resolveDir: fileURLToPath(new URL('../src', import.meta.url)), sourcefile: 'bad-entry.js' },
        bundle: true,
        platform: 'browser',
        write: false,
        logLevel: 'silent',
        plugins: [noNodeBuiltins],
      });
      await expect(attempt).rejects.toThrow(/imports the Node built-in '(node:)?fs'/);
    }
  });
});

describe('ic in headless Chromium', () => {
  test('maps a qemu-made qcow2 as qemu-img does and converts it in place to QED in memory', async (context) => {
    const state = chromiumState!;
    if ('missing' in state) {
      // In CI a missing browser is a failure, never a skip.
      if (process.env['CI']) throw new Error(state.missing);
      return context.skip(state.missing);
    }
    await built();
    browser = await chromium.launch({ executablePath: state.path, args: CHROMIUM_ARGS, headless: true, timeout: 180_000 });
    const before = sha256File(image);
    const base = await serve();
    const tab = await browser!.newPage();
    const problems: string[] = [];
    tab.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
    tab.on('console', (message) => {
      if (message.type() === 'error') problems.push(`console error: ${message.text()}`);
    });
    await tab.goto(`${base}/`, { timeout: 120_000 });
    await tab.waitForFunction(() => typeof (globalThis as { icRoundTrip?: unknown }).icRoundTrip === 'function', undefined, { timeout: 120_000 });
    const out = await tab.evaluate(() => (globalThis as unknown as { icRoundTrip: () => Promise<Record<string, unknown>> }).icRoundTrip());
    await tab.close();
    expect(problems).toEqual([]);
    expect(out['userAgent']).toMatch(/HeadlessChrome|Chrome/);
    expect(out['nodeGlobals']).toEqual([]);
    expect(out['sourceFormat']).toBe('qcow2');
    expect(out['targetFormat']).toBe('qed');
    expect(out['report']).toMatchObject({ verified: true });
    expect((out['report'] as { clustersKept: number }).clustersKept).toBeGreaterThan(0);

    // The page's map of the qcow2 is qemu-img's, to the byte.
    const qemuSourceMap = run('qemu-img', ['map', '-f', 'qcow2', '--output=json', image]);
    expect(qemuSourceMap.code).toBe(0);
    expect(out['sourceMap']).toBe(qemuSourceMap.stdout);
    expect(sha256File(image), 'the page worked on a copy').toBe(before);

    // The bytes it posted back are a clean QED image with the same guest content, mapped as the page mapped it.
    expect(posted?.length).toBe(out['size']);
    writeFileSync(result, posted!);
    const check = run('qemu-img', ['check', '-f', 'qed', result]);
    expect(check.code, check.stdout + check.stderr).toBe(0);
    const compare = run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'qed', image, result]);
    expect(compare.code, compare.stdout + compare.stderr).toBe(0);
    expect(compare.stdout).toMatch(/Images are identical/);
    const qemuTargetMap = run('qemu-img', ['map', '-f', 'qed', '--output=json', result]);
    expect(out['targetMap']).toBe(qemuTargetMap.stdout);
  }, 300_000);
});
