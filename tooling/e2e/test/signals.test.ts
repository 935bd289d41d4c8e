/**
 * Signals, through the real executable. The hook IC_TEST_STOP_AFTER_WRITES=N[,M...] makes ic SIGSTOP itself
 * right after those writes, so a signal can be sent at a known point of a conversion: the signal is queued while
 * ic is stopped and handled once SIGCONT lets it go on. No test depends on timing: every wait polls for a state
 * (stopped, exited) with a generous limit.
 *
 * - SIGUSR1 prints one progress line and never starts Node's inspector (no new listening TCP socket).
 * - SIGINT/SIGTERM during a writing command stop it at the engine's next safe point: one INTERRUPTED line saying
 *   what state the image is in, exit 128 + signal number; whatever the state, the image is valid and holds the
 *   same guest data.
 *   Before the commit the engine puts the file back as it was; after it, the image is the new format (recover
 *   finishes what is left).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, existsSync, statSync } from 'node:fs';
import {
  IC_BIN,
  icCli,
  listeningTcpSockets,
  qemuCheck,
  qemuCompare,
  qemuCreate,
  qemuIo,
  requireBuiltIc,
  requireQemu,
  sha256File,
  socketInodes,
  stoppedOrExited,
  tempDir,
} from '@ic/test-utils';

const scratch = tempDir('ic-signals-');
beforeAll(() => {
  requireQemu();
  requireBuiltIc();
});
afterAll(() => scratch.cleanup());

interface Running {
  child: ChildProcess;
  stderr(): string;
  stdout(): string;
  exit: Promise<{ status: number | null; signal: NodeJS.Signals | null }>;
}

function start(args: string[], stopAfter: string, extraEnv: Record<string, string> = {}): Running {
  const child = spawn(process.execPath, [IC_BIN, ...args], {
    env: { ...process.env, IC_TEST_STOP_AFTER_WRITES: stopAfter, ...extraEnv },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  let stdout = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  const exit = new Promise<{ status: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('close', (status, signal) => resolve({ status, signal })),
  );
  return { child, stderr: () => stderr, stdout: () => stdout, exit };
}

/** A qcow2 image with data in several places, and a pristine copy of it. */
function sample(name: string): { image: string; pristine: string } {
  const image = scratch.path(`${name}.qcow2`);
  qemuCreate(image, 'qcow2', '256M');
  qemuIo(image, 'qcow2', ['write -P 0x6b 0 8M', 'write -P 0x6c 100M 1M', 'write -P 0x6d 200M 3M', 'write -z 50M 64k']);
  const pristine = scratch.path(`${name}-pristine.qcow2`);
  copyFileSync(image, pristine);
  return { image, pristine };
}

/** The last line of stderr: must be the one INTERRUPTED line, naming the format the image is in. */
function interruptedLine(stderr: string): { line: string; format: string } {
  const line = stderr.trimEnd().split('\n').pop() ?? '';
  expect(line).toMatch(/^ic: [^\n]+ \[INTERRUPTED\]$/);
  const format = line.match(/the image is (?:now |still )?(\w+)/)?.[1];
  expect(format, line).toBeDefined();
  return { line, format: format! };
}

/** Whatever state a stop left, the image is valid in `format` and holds the pristine guest data. */
function expectIntact(image: string, format: string, pristine: string): void {
  const check = qemuCheck(image, format);
  expect([0, 3], check.text).toContain(check.code); // 3: leaked clusters only (harmless)
  expect(qemuCompare(image, format, pristine, 'qcow2').code).toBe(0);
  const info = icCli(['info', '--output=json', image]);
  expect(info.status, info.stderr).toBe(0);
  expect(JSON.parse(info.stdout).format).toBe(format);
}

describe('SIGUSR1', () => {
  it('prints one progress line on stderr and opens no debugger port', { timeout: 180_000 }, async () => {
    const { image, pristine } = sample('usr1');
    const ic = start(['convert-inplace', image, 'qed'], '2,3,4,5,6,7,8,9,10');
    expect(await stoppedOrExited(ic.child), ic.stderr()).toBe(true);
    const before = listeningTcpSockets();
    ic.child.kill('SIGUSR1');
    ic.child.kill('SIGCONT');
    let checkedWhileAlive = false;
    while (await stoppedOrExited(ic.child)) {
      if (!checkedWhileAlive && /^ic: progress: /m.test(ic.stderr())) {
        // ic has handled SIGUSR1 and is still running (stopped): had the inspector started, it would listen now.
        const fresh = [...listeningTcpSockets()].filter((socket) => !before.has(socket));
        expect(fresh).toEqual([]);
        const own = socketInodes(ic.child.pid!);
        expect([...listeningTcpSockets()].filter((socket) => own.has(socket.split(' ')[1]!))).toEqual([]);
        checkedWhileAlive = true;
      }
      ic.child.kill('SIGCONT');
    }
    const exit = await ic.exit;
    expect(exit.status, ic.stderr()).toBe(0);
    expect(checkedWhileAlive, `no progress line while ic ran: ${ic.stderr()}`).toBe(true);
    const lines = ic.stderr().split('\n').filter((line) => line !== '');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^ic: progress: convert-inplace '.*usr1\.qcow2': \w+( \d+\/\d+ \(\d+%\))?$/);
    expect(ic.stderr()).not.toMatch(/Debugger|inspector/i);
    expectIntact(image, 'qed', pristine);
  });
});

describe('SIGINT and SIGTERM stop a writing command at a safe point', () => {
  for (const [signal, status] of [
    ['SIGINT', 130],
    ['SIGTERM', 143],
  ] as const) {
    it(`${signal} during convert-inplace: exit ${status}, one line naming the state, the image intact`, { timeout: 180_000 }, async () => {
      const { image, pristine } = sample(`stop-${signal}`);
      const ic = start(['convert-inplace', image, 'qed'], '2');
      expect(await stoppedOrExited(ic.child), ic.stderr()).toBe(true);
      ic.child.kill(signal);
      ic.child.kill('SIGCONT');
      const exit = await ic.exit;
      expect(exit.signal).toBeNull();
      expect(exit.status, ic.stderr()).toBe(status);
      expect(ic.stderr()).not.toMatch(/\n\s+at /);
      const { line, format } = interruptedLine(ic.stderr());
      expect(['qcow2', 'qed']).toContain(format);
      if (line.includes('ic recover')) {
        const recovered = icCli(['recover', image]);
        expect(recovered.status, recovered.stderr).toBe(0);
      }
      expectIntact(image, format, pristine);
    });
  }

  // The engine honours ConvertInPlaceRequest.signal: stopped during its build phase (before the commit), it puts
  // the file back as it was and throws IcError INTERRUPTED (no imageFormat).
  it('SIGINT before the commit leaves the image as it was: still qcow2, its old size, same data', { timeout: 180_000 }, async () => {
    const { image, pristine } = sample('stop-strict');
    const ic = start(['convert-inplace', image, 'qed'], '2');
    expect(await stoppedOrExited(ic.child)).toBe(true);
    ic.child.kill('SIGINT');
    ic.child.kill('SIGCONT');
    expect((await ic.exit).status).toBe(130);
    const { line, format } = interruptedLine(ic.stderr());
    expect(line).toContain('still qcow2');
    expect(format).toBe('qcow2');
    expect(statSync(image).size).toBe(statSync(pristine).size);
    expectIntact(image, 'qcow2', pristine);
  });

  it('SIGINT during create: the partly written file is removed, exit 130', { timeout: 60_000 }, async () => {
    const target = scratch.path('created.qcow2');
    const ic = start(['create', '-q', '-f', 'qcow2', target, '64M'], '1');
    expect(await stoppedOrExited(ic.child), ic.stderr()).toBe(true);
    ic.child.kill('SIGINT');
    ic.child.kill('SIGCONT');
    expect((await ic.exit).status, ic.stderr()).toBe(130);
    expect(ic.stderr()).toMatch(/^ic: [^\n]*creation interrupted by SIGINT[^\n]*removed \[INTERRUPTED\]\n$/);
    expect(existsSync(target)).toBe(false);
  });

  it('SIGTERM during recover: the recovery (short, crash-safe) is let finish, exit 143', { timeout: 180_000 }, async () => {
    const { image, pristine } = sample('recover');
    // An interrupted conversion to recover: killed right after its third write.
    const killed = icCli(['convert-inplace', image, 'qed'], { env: { IC_TEST_KILL_AFTER_WRITES: '3' } });
    expect(killed.signal).toBe('SIGKILL');
    const before = sha256File(image);
    const ic = start(['recover', image], '1');
    expect(await stoppedOrExited(ic.child), ic.stderr()).toBe(true);
    expect(sha256File(image)).not.toBe(before); // it was stopped right after its first write
    ic.child.kill('SIGTERM');
    ic.child.kill('SIGCONT');
    expect((await ic.exit).status, ic.stderr()).toBe(143);
    const { format } = interruptedLine(ic.stderr());
    expect(icCli(['recover', image]).stdout).toMatch(/no interrupted conversion/);
    expectIntact(image, format, pristine);
  });
});

/**
 * SIGINT and SIGTERM at random moments: 30 trials over six pairs (five formats as sources, four as targets; more with
 * IC_SIGNAL_TRIALS=N per pair, and another draw with IC_SIGNAL_SEED), each
 * stopped right after a write drawn at random (fixed seed) from the writes a full run of the same conversion makes.
 * Every trial: exit 128 + signal number, one INTERRUPTED line naming the format the image is in, then `ic recover`
 * (exit 0: it finishes, undoes or finds nothing), and after it `qemu-img check` exit 0 — no leaks — and
 * `qemu-img compare` identical to the source as it was.
 */
describe('SIGINT and SIGTERM at random writes of conversions, then ic recover', () => {
  const pairs = [
    { from: 'qcow2', to: 'qed' },
    { from: 'qed', to: 'qcow2' },
    { from: 'vmdk', to: 'qed' },
    { from: 'vdi', to: 'vmdk' },
    { from: 'parallels', to: 'qcow2' },
    { from: 'raw', to: 'qcow2' },
  ];
  const TRIALS_PER_PAIR = Number(process.env.IC_SIGNAL_TRIALS ?? 5);
  let seed = Number(process.env.IC_SIGNAL_SEED ?? 0x5eed);
  const random = (n: number): number => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return (seed >>> 8) % n;
  };

  for (const { from, to } of pairs) {
    it(`${from} -> ${to}: ${TRIALS_PER_PAIR} trials`, { timeout: 300_000 + TRIALS_PER_PAIR * 60_000 }, async () => {
      const pristine = scratch.path(`random-${from}-pristine.${from}`);
      qemuCreate(pristine, from, '64M');
      qemuIo(pristine, from, ['write -P 0x61 0 3M', 'write -P 0x62 20M 1M', 'write -P 0x63 40M 2M', 'write -P 0x64 63M 512k']);
      const formatArgs = from === 'raw' ? ['-f', 'raw'] : [];
      const probe = scratch.path(`random-${from}-probe.${from}`);
      copyFileSync(pristine, probe);
      const full = icCli(['convert-inplace', ...formatArgs, '--output=json', probe, to]);
      expect(full.status, full.stderr).toBe(0);
      const writes = (JSON.parse(full.stdout) as { io: { writes: number } }).io.writes;
      expect(writes).toBeGreaterThan(1);

      const outcomes: string[] = [];
      for (let trial = 0; trial < TRIALS_PER_PAIR; trial++) {
        const [signal, status] = random(2) === 0 ? (['SIGINT', 130] as const) : (['SIGTERM', 143] as const);
        const after = 1 + random(writes);
        const image = scratch.path(`random-${from}-${trial}.img`);
        copyFileSync(pristine, image);
        const ic = start(['convert-inplace', ...formatArgs, image, to], String(after));
        expect(await stoppedOrExited(ic.child), `stop after write ${after} of ${writes}: ${ic.stderr()}`).toBe(true);
        ic.child.kill(signal);
        ic.child.kill('SIGCONT');
        const exit = await ic.exit;
        expect(exit.status, ic.stderr()).toBe(status);
        expect(ic.stderr()).not.toMatch(/\n\s+at /);
        const { format } = interruptedLine(ic.stderr());
        expect([from, to]).toContain(format);
        const recovered = icCli(['recover', image]);
        expect(recovered.status, recovered.stderr).toBe(0);
        const info = icCli(['info', '--output=json', ...(format === 'raw' ? ['-f', 'raw'] : []), image]);
        expect(info.status, info.stderr).toBe(0);
        const now = (JSON.parse(info.stdout) as { format: string }).format;
        if (now !== 'raw') {
          const check = qemuCheck(image, now);
          expect(check.code, `${signal} after write ${after}: ${check.text}`).toBe(0);
        }
        expect(qemuCompare(image, now, pristine, from).code, `${signal} after write ${after}`).toBe(0);
        outcomes.push(`${signal}@${after}/${writes}->${now}`);
      }
      console.log(`${from} -> ${to}: ${outcomes.join(', ')}`);
    });
  }
});
