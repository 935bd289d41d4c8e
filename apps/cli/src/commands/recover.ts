import { recover, type RecoverOptions } from '@ic/core';
import { withKillSwitch } from '../kill-switch.js';
import { EXIT, type Context } from '../context.js';
import { openFile } from '../images.js';

/** `ic recover`: finishes or undoes an interrupted in-place conversion; touches nothing when there is none. */
export async function recoverCommand(context: Context, filename: string, options: RecoverOptions = {}): Promise<number> {
  const io = withKillSwitch(await openFile(context, filename, 'write'));
  try {
    const result = await recover(io, options);
    const after = result.format ? ` (the image is now ${result.format})` : '';
    context.out(`${filename}: ${result.detail}${after}\n`);
    return EXIT.OK;
  } finally {
    await io.close().catch(() => undefined);
  }
}
