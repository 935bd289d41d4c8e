/**
 * Crash campaigns for conversions into Parallels (and out of it) with ic's bundled in-place drivers and raw: every
 * write of each conversion killed (prefixes, one write omitted, torn sectors, subsets, random states), recovered,
 * and judged: the old image byte-exact or the new one verified, nothing else. The partners are loaded without a
 * static dependency (a driver depends on no other driver).
 */
import { describeCrashCampaigns, installedPartners } from '@ic/conformance';
import type { Driver } from '@ic/core';
import { parallelsDriver } from '../src/index.js';

const { drivers: partners } = await installedPartners();
const rawModule = (await import(/* @vite-ignore */ ['@ic', 'raw'].join('/')).catch(() => ({}))) as { rawDriver?: Driver };
const drivers = [...partners, ...(rawModule.rawDriver ? [rawModule.rawDriver] : []), parallelsDriver];

describeCrashCampaigns(drivers, { subject: parallelsDriver, selfTest: false, part: { index: Number(process.env['IC_CRASH_PART'] ?? 0), of: Number(process.env['IC_CRASH_PARTS'] ?? 1) } });
