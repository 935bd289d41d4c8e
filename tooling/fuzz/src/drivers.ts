import type { Driver } from '@ic/core';
import { parallelsDriver } from '@ic/parallels';
import { qcow2Driver } from '@ic/qcow2';
import { qedDriver } from '@ic/qed';
import { rawDriver } from '@ic/raw';
import { vdiDriver } from '@ic/vdi';
import { vhdxDriver } from '@ic/vhdx';
import { vmdkDriver } from '@ic/vmdk';
import { vpcDriver } from '@ic/vpc';

/** The first-party drivers, in the CLI's order: every one probes each mutant, every in-place target dry-runs it. */
export const FUZZ_DRIVERS: readonly Driver[] = [qcow2Driver, qedDriver, vmdkDriver, rawDriver, vdiDriver, vpcDriver, parallelsDriver, vhdxDriver];
