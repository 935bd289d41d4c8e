/**
 * Crash campaigns on the first-party drivers that are installed: the second half of the pairs (the first
 * half, and the self-test that an engine without flushes is caught, are in crash-drivers.test.ts). Drivers
 * are found by capability; a package that is missing or exports no driver is left out.
 */
import type { Driver } from '@ic/core';
import { describeCrashCampaigns } from '../src/crash/index.js';
import { installedDrivers } from './installed-drivers.js';


const drivers = await installedDrivers();

describeCrashCampaigns(drivers, { part: { index: 1, of: 2 } });
