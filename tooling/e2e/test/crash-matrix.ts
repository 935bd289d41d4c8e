/**
 * How long one crash campaign of crash-matrix-*.test.ts may take: sources with 1 MiB blocks (VDI, VHDX) copy tens of
 * MiB per crash state, and a loaded 2-core machine is several times slower than an idle one.
 */
export const CRASH_CAMPAIGN_TIMEOUT = 20 * 60_000;
