/**
 * Crash campaigns on the first-party drivers that are installed (first half of the pairs; the other half is
 * in crash-drivers-2.test.ts so that the two run in parallel). Drivers are found by capability; a package
 * that is missing or exports no driver is left out.
 */
import type { Driver } from '@ic/core';
import { describeCrashCampaigns } from '../src/crash/index.js';
import { installedDrivers } from './installed-drivers.js';


const drivers = await installedDrivers();

describeCrashCampaigns(drivers, { part: { index: 0, of: 2 } });
