import { IcError, hasCapability, type CheckReport, type Driver } from '@ic/core';
import { EXIT, errorLine, printable, type Context } from '../context.js';
import { namedDriver, openImage } from '../images.js';
import { checkHuman, checkJson, qemuJson } from '@ic/qemu-output';

export interface CheckCommandOptions {
  format?: string;
  output: 'human' | 'json';
  repair?: 'leaks' | 'all';
}

/**
 * Repair is a capability a driver declares as data (`capabilities.repair: true`, outside the core's list
 * for now); no first-party driver declares it yet.
 */
function canRepair(driver: Driver): boolean {
  return (driver.capabilities as Readonly<Record<string, unknown>>)['repair'] === true;
}

/** `ic check`: qemu-img check's report and exit statuses (0 clean, 2 corruptions, 3 leaks only, 1 failed, 63 no check). */
export async function checkCommand(context: Context, filename: string, options: CheckCommandOptions): Promise<number> {
  let opened = await openImage(context, filename, { driver: namedDriver(context, options.format) });
  try {
    const { driver } = opened;
    if (!hasCapability(driver, 'check') || !opened.image.check) {
      context.err(errorLine(`${filename}: this image format (${driver.name}) does not support checks`, 'UNSUPPORTED'));
      return EXIT.CHECK_UNSUPPORTED;
    }
    if (options.repair) {
      if (!canRepair(driver)) throw new IcError('UNSUPPORTED', `${driver.name}: repair is not supported yet (check without -r reports the problems)`);
      await opened.close();
      opened = await openImage(context, filename, { driver, access: 'write' });
    }
    const check = opened.image.check!.bind(opened.image);
    let report: CheckReport = await check(options.repair ? { repair: options.repair } : {});
    const fixedLeaks = report.leaksFixed ?? 0;
    const fixedCorruptions = report.corruptionsFixed ?? 0;
    if (fixedLeaks > 0 || fixedCorruptions > 0) {
      if (options.output === 'human') {
        context.out(
          `The following inconsistencies were found and repaired:\n\n    ${fixedLeaks} leaked clusters\n    ${fixedCorruptions} corruptions\n\n` +
            'Double checking the fixed image now...\n',
        );
      }
      for (const message of report.messages) context.err(`${printable(message)}\n`);
      report = { ...(await check({})), leaksFixed: fixedLeaks, corruptionsFixed: fixedCorruptions };
    }
    for (const message of report.messages) context.err(`${printable(message)}\n`);
    context.out(options.output === 'json' ? qemuJson(checkJson(report, filename, driver.name)) : checkHuman(report));
    if (report.checkErrors > 0) {
      context.err(errorLine(`${filename}: check failed (${report.checkErrors} errors prevented a complete check)`, 'CHECK_FAILED'));
      return EXIT.FAILURE;
    }
    if (report.corruptions > 0) return EXIT.CHECK_CORRUPT;
    if (report.leaks > 0) return EXIT.CHECK_LEAKS;
    return EXIT.OK;
  } finally {
    await opened.close();
  }
}
