import type { CheckReport } from '@ic/core/sdk';
import { vmdkError } from './errors.js';
import { HEADER_FIELDS } from './header.js';
import type { SparseState } from './image.js';

/**
 * `check -r leaks|all` for a VMDK sparse extent. The format keeps no reference counts (a grain nothing names is
 * not counted anywhere, so there are no leaks to free) and no redundancy a repair could trust over the primary
 * tables (when the grain directory and its redundant copy disagree, nothing says which one is right), and
 * qemu-img cannot repair VMDK either (`qemu-img check -r` answers 63, "does not support checks"). So:
 *  - damage found by the check is refused (one line, nothing written);
 *  - uncleanShutdown (VMware's "not closed cleanly", the dirty flag of the format) is cleared once the check finds
 *    the tables consistent: one byte in sector 0, flushed; a stream-optimized file (header copy in a footer) keeps
 *    it;
 *  - otherwise the report says there is nothing to repair, and nothing is written.
 */
export async function repairSparse(state: SparseState, report: CheckReport): Promise<CheckReport> {
  if (report.corruptions > 0 || report.checkErrors > 0) {
    const first = report.messages.find((message) => !message.startsWith('note:')) ?? 'the tables are inconsistent';
    throw vmdkError('CORRUPT', `${first}: VMDK has nothing a repair could rebuild that from (qemu-img cannot repair VMDK either); nothing was written`);
  }
  if (state.header.uncleanShutdown !== 0 && !state.footer && !state.geometry.compressed) {
    if (!state.io.writable) throw vmdkError('INVALID', 'repair needs the image opened for writing');
    await state.io.write(HEADER_FIELDS.uncleanShutdown, new Uint8Array(1));
    await state.io.flush();
    state.header.uncleanShutdown = 0;
    return { ...report, messages: [...report.messages.filter((message) => !message.includes('uncleanShutdown')), 'Cleared uncleanShutdown (the tables are consistent)'] };
  }
  return { ...report, messages: [...report.messages, 'nothing to repair: VMDK keeps no reference counts, so it has no leaks, and the check found no damage'] };
}
