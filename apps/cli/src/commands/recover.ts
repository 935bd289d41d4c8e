import { recover, type RecoverOptions } from '@ic/core';
import { FileIO } from '@ic/core/node';
import { withKillSwitch } from '../kill-switch.js';
import { EXIT, type Context } from '../context.js';

/** `ic recover`: finishes or undoes an interrupted in-place conversion; touches nothing when there is none. */
export async function recoverCommand(context: Context, filename: string, options: RecoverOptions = {}): Promise<number> {
  const io = withKillSwitch(await FileIO.open(filename, { writable: true, lock: true }));
  try {
    const result = await recover(io, options);
    const after = result.format ? ` (the image is now ${result.format})` : '';
    context.out(`${filename}: ${result.detail}${after}\n`);
    return EXIT.OK;
  } finally {
    await io.close().catch(() => undefined);
  }
}
