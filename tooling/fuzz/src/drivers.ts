import type { Driver } from '@ic/core';
import { qcow2Driver } from '@ic/qcow2';
import { qedDriver } from '@ic/qed';
import { rawDriver } from '@ic/raw';
import { vmdkDriver } from '@ic/vmdk';

/** The first-party drivers, in the CLI's order: every one probes each mutant, every in-place target dry-runs it. */
export const FUZZ_DRIVERS: readonly Driver[] = [qcow2Driver, qedDriver, vmdkDriver, rawDriver];
