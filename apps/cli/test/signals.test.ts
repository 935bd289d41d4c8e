/** How the CLI stops a writing command (in-process; the real signals are in tooling/e2e/test/signals.test.ts). */
import { afterAll, expect, test } from 'vitest';
import { existsSync, writeFileSync } from 'node:fs';
import { IcError } from '@ic/core';
import { qemuCreate, requireQemu, sha256File, tempDir } from '@ic/test-utils';
import { reportError } from '../src/context.js';
import { activityLine, signalExitStatus } from '../src/signals.js';
import { ERROR_LINE, runIc } from './helpers.js';

requireQemu();
const work = tempDir('ic-cli-signals-');
afterAll(() => work.cleanup());

test('a stop requested before the first write: one INTERRUPTED line, nothing written', async () => {
  const image = work.path('early.qcow2');
  qemuCreate(image, 'qcow2', '16M');
  const before = sha256File(image);
  const result = await runIc(['convert-inplace', image, 'qed'], { signal: AbortSignal.abort() });
  expect(result.code).toBe(1); // the caller's AbortSignal, not a signal: exit 1
  expect(result.stdout).toBe('');
  expect(result.stderr).toMatch(ERROR_LINE);
  expect(result.stderr).toMatch(/interrupted by a request to stop before anything was written; the image is unchanged \[INTERRUPTED\]/);
  expect(sha256File(image)).toBe(before);

  const existing = work.path('existing.img');
  writeFileSync(existing, 'keep me');
  const kept = sha256File(existing);
  const created = await runIc(['create', '-f', 'qcow2', existing, '1M'], { signal: AbortSignal.abort() });
  expect(created.code).toBe(1);
  expect(created.stderr).toContain('nothing was created [INTERRUPTED]');
  expect(sha256File(existing)).toBe(kept); // not even truncated
  expect((await runIc(['create', '-f', 'qcow2', work.path('never.qcow2'), '1M'], { signal: AbortSignal.abort() })).code).toBe(1);
  expect(existsSync(work.path('never.qcow2'))).toBe(false);
  const recovered = await runIc(['recover', image], { signal: AbortSignal.abort() });
  expect(recovered.code).toBe(1);
  expect(recovered.stderr).toContain('[INTERRUPTED]');
  // Reads are not writing commands: a stop request does not concern them.
  expect((await runIc(['info', image], { signal: AbortSignal.abort() })).code).toBe(0);
});

test('an engine INTERRUPTED past the commit names the format, says the data is intact and what to run', () => {
  let text = '';
  const status = reportError(
    { err: (t) => (text += t), debug: false },
    new IcError('INTERRUPTED', 'disk.qcow2: interrupted by SIGINT after the commit', { path: 'disk.qcow2', imageFormat: 'qed' }),
  );
  expect(status).toBe(1);
  expect(text).toMatch(ERROR_LINE);
  expect(text).toBe(
    "ic: disk.qcow2: interrupted by SIGINT after the commit; the image is now qed and its data is intact; run 'ic recover disk.qcow2' to finish (safe to run at any time) [INTERRUPTED]\n",
  );
});

test('exit statuses and the SIGUSR1 line', () => {
  expect(signalExitStatus('SIGINT')).toBe(130);
  expect(signalExitStatus('SIGTERM')).toBe(143);
  expect(activityLine({ command: 'convert-inplace', file: 'a.qcow2', phase: 'build', done: 3, total: 12 })).toBe(
    "ic: progress: convert-inplace 'a.qcow2': build 3/12 (25%)\n",
  );
  expect(activityLine({ command: 'info', file: 'x\n.img', phase: 'starting', done: 0, total: 0 })).toBe("ic: progress: info 'x\\x0a.img': starting\n");
});
