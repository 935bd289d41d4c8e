import { Registry } from '@ic/core';
import { qcow2Driver } from '@ic/qcow2';
import { qedDriver } from '@ic/qed';
import { vmdkDriver } from '@ic/vmdk';
import { rawDriver } from '@ic/raw';
import { vdiDriver } from '@ic/vdi';
import { vpcDriver } from '@ic/vpc';
import { parallelsDriver } from '@ic/parallels';
import { vhdxDriver } from '@ic/vhdx';

/** Every first-party driver; tests iterate over what this holds, never over format names. */
export const registry = new Registry([qcow2Driver, qedDriver, vmdkDriver, rawDriver, vdiDriver, vpcDriver, parallelsDriver, vhdxDriver].filter((d) => d !== undefined));
