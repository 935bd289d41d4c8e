import { recover, type RecoverOptions } from '@ic/core';
import { withKillSwitch } from '../kill-switch.js';
import { EXIT, errorLine, type Context } from '../context.js';
import { openFile } from '../images.js';

/**
 * `ic recover`: finishes or undoes an interrupted in-place conversion; touches nothing when there is none.
 * Recovery is short and itself crash-safe; the engine cannot stop it half-way (RecoverOptions has no signal
 * yet), so SIGINT/SIGTERM let it finish, then ic says so and exits 128 + the signal's number.
 */
export async function recoverCommand(context: Context, filename: string, options: RecoverOptions = {}): Promise<number> {
  const { interrupts } = context;
  return interrupts.during(async () => {
    context.activity.phase = 'open';
    const io = withKillSwitch(await openFile(context, filename, 'write'));
    try {
      interrupts.throwIfStopped(filename, 'before anything was written; nothing was recovered');
      context.activity.phase = 'recover';
      const result = await recover(io, { drivers: context.registry, ...options });
      const after = result.format ? ` (the image is now ${result.format})` : '';
      context.out(`${filename}: ${result.detail}${after}\n`);
      if (interrupts.stopped) {
        context.err(errorLine(`${filename}: ${interrupts.cause} arrived during the recovery, which was let finish: ${result.detail}${after}`, 'INTERRUPTED'));
        return interrupts.exitStatus();
      }
      return EXIT.OK;
    } finally {
      await io.close().catch(() => undefined);
    }
  });
}
