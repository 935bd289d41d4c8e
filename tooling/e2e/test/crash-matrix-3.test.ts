/**
 * Crash campaigns over ic's bundled drivers (the registry), part 3 of 4 of the ordered pairs (split so the parts
 * run in parallel): each conversion killed at every write, at every subset of unflushed writes, with torn sectors
 * and at random states, then recovered (the recovery crashed too): the old image byte-exact or the new one verified,
 * never anything else. Adding a driver to the registry grows this suite with no edit here. With
 * IC_KIT_COVERAGE=covering (the repository's default for `npm test`) one shape per pair runs; IC_KIT_COVERAGE=full
 * runs every shape with the full number of random states.
 */
import { describeCrashCampaigns } from '@ic/conformance';
import { registry } from '../src/registry.js';
import { CRASH_CAMPAIGN_TIMEOUT } from './crash-matrix.js';

describeCrashCampaigns(registry.list(), { part: { index: 2, of: 4 }, timeout: CRASH_CAMPAIGN_TIMEOUT, selfTest: false });
