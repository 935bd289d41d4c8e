import { IcError, type AmendReport, type ImageFeature, type OptionDescriptor, type OptionValues } from '@ic/core/sdk';
import type { BitmapEntry } from './bitmaps.js';
import { analyseImage } from './check.js';
import { FORMAT, invalidOption, unsupportedFeature } from './errors.js';
import { encodeExtensions, ExtensionType, featureNameTableExtension, type RawExtension } from './extensions.js';
import { AutoclearFeature, CompatibleFeature, encodeHeader, HeaderField, IncompatibleFeature, isExtendedL2, KNOWN_INCOMPATIBLE, V2_HEADER_LENGTH, V3_HEADER_LENGTH } from './header.js';
import { changeRefcountWidth, planRefcountWidth, type RefcountWidthPlan } from './refcount-width.js';
import { rebuildRefcounts, repairImage } from './repair.js';
import { loadState, type Qcow2State } from './state.js';

const TWO_32 = 2 ** 32;
const SECTOR = 512;

/** `ic amend -o` for qcow2: qemu-img amend's names; only what is named changes. */
export const QCOW2_AMEND_OPTIONS: readonly OptionDescriptor[] = [
  { name: 'compat', type: 'enum', values: ['0.10', '1.1', 'v2', 'v3'], help: 'compatibility level: 0.10 (version 2; expands zero clusters) or 1.1 (version 3)' },
  { name: 'lazy_refcounts', type: 'boolean', help: 'postpone refcount updates (compat 1.1 only); off on a dirty image rebuilds the refcounts first' },
  { name: 'refcount_bits', type: 'integer', help: 'refcount width: 1, 2, 4, 8, 16, 32 or 64 bits (other than 16 needs compat 1.1); the refcount table and blocks are rewritten' },
];

const has = (word: bigint, bit: bigint): boolean => (word & bit) !== 0n;

/** The features a qcow2 image uses, each with what removing it takes (the data behind `ic demote`). */
export async function qcow2Features(state: Qcow2State): Promise<ImageFeature[]> {
  const { header } = state;
  const features: ImageFeature[] = [];
  if (header.version === 2) return features;
  const zero = await zeroEntries(state);
  // Demote changes the refcount width to 16 on the way.
  const v2Blockers = downgradeBlockers(state, 16);
  features.push({
    name: 'v3',
    kind: 'incompatible',
    description: 'qcow2 version 3 (compat 1.1): readers of version 2 refuse the image',
    removal:
      v2Blockers.length === 0
        ? {
            possible: true,
            cost: zero.count > 0 ? (zero.needZeros ? 'zeros' : 'metadata') : state.refcounts.bits !== 16 ? 'metadata' : 'header',
            how: 'rewrite the header as version 2 (after the features version 2 cannot have; refcounts rewritten at 16 bits first when they are not)',
          }
        : { possible: false, why: v2Blockers.join('; ') },
  });
  if (zero.count > 0) {
    features.push({
      name: 'zero_clusters',
      kind: 'incompatible',
      description: `${zero.count} L2 entries with the zero flag (version 3 only)`,
      removal: header.nbSnapshots > 0
        ? { possible: false, why: 'internal snapshots may share the tables (not handled by ic demote)' }
        : zero.needZeros
        ? { possible: true, cost: 'zeros', how: 'clusters of zeros written where the entry must hide the backing file or its cluster holds stale bytes' }
        : { possible: true, cost: 'metadata', how: 'entries made unallocated (no backing file: they read as zeros)' },
    });
  }
  if (state.dirty) {
    features.push({
      name: 'dirty',
      kind: 'incompatible',
      description: 'dirty bit: the refcounts may be stale (lazy refcounts, not closed cleanly)',
      removal: { possible: true, cost: 'metadata', how: 'refcounts rebuilt from the tables (check -r all)' },
    });
  }
  if (state.corrupt) features.push({ name: 'corrupt', kind: 'incompatible', description: 'corrupt bit: qemu found the image inconsistent', removal: { possible: false, why: 'repair it first: ic check -r all clears the bit once the image is consistent' } });
  if (has(header.incompatibleFeatures, IncompatibleFeature.externalDataFile)) {
    features.push({ name: 'data_file', kind: 'incompatible', description: 'guest data lives in an external data file', removal: { possible: false, why: 'the data would have to be copied into the image (qemu-img convert)' } });
  }
  if (has(header.incompatibleFeatures, IncompatibleFeature.compressionType)) {
    features.push({ name: 'compression_type', kind: 'incompatible', description: 'compressed clusters use zstd', removal: { possible: false, why: 'compressed clusters would have to be recompressed (qemu-img convert)' } });
  }
  if (isExtendedL2(header)) {
    features.push({ name: 'extended_l2', kind: 'incompatible', description: 'L2 entries carry subcluster bitmaps', removal: { possible: false, why: 'every L2 table would have to be rewritten at half the coverage (qemu-img convert)' } });
  }
  const unknown = header.incompatibleFeatures & ~KNOWN_INCOMPATIBLE;
  if (unknown !== 0n) features.push({ name: `incompatible_0x${unknown.toString(16)}`, kind: 'incompatible', description: 'unknown incompatible feature bits', removal: { possible: false, why: 'unknown to ic' } });
  if (has(header.compatibleFeatures, CompatibleFeature.lazyRefcounts)) {
    features.push({
      name: 'lazy_refcounts',
      kind: 'compatible',
      description: 'refcount updates may be postponed (the dirty bit says when they are stale)',
      removal: state.dirty
        ? { possible: true, cost: 'metadata', how: 'refcounts rebuilt (the image is dirty), then the bit cleared' }
        : { possible: true, cost: 'header', how: 'the bit cleared (one header write)' },
    });
  }
  if (state.refcounts.bits !== 16) {
    features.push({
      name: 'refcount_bits',
      kind: 'compatible',
      description: `${state.refcounts.bits}-bit refcounts (version 2 has 16)`,
      removal: { possible: true, cost: 'metadata', how: 'refcount table and blocks rewritten at 16 bits past the end of the file, switched by one header write' },
    });
  }
  if (has(header.autoclearFeatures, AutoclearFeature.bitmaps)) {
    features.push({ name: 'bitmaps', kind: 'autoclear', description: 'persistent dirty bitmaps are in sync with the image', removal: { possible: false, why: 'remove the bitmaps with qemu-img bitmap --remove (clearing the bit would leak their clusters)' } });
  }
  if (has(header.autoclearFeatures, AutoclearFeature.dataFileRaw)) {
    features.push({ name: 'data_file_raw', kind: 'autoclear', description: 'the external data file is a valid raw image', removal: { possible: false, why: 'belongs to the external data file' } });
  }
  return features;
}

/** Why an image cannot become version 2 in place with `bits`-bit refcounts (empty when it can, after demote's own steps). */
function downgradeBlockers(state: Qcow2State, bits: number): string[] {
  const { header } = state;
  const out: string[] = [];
  if (bits !== 16) out.push(`refcount_bits is ${bits} (version 2 has 16 only: add refcount_bits=16)`);
  if (isExtendedL2(header)) out.push('extended L2 entries');
  if (has(header.incompatibleFeatures, IncompatibleFeature.externalDataFile)) out.push('an external data file');
  if (has(header.incompatibleFeatures, IncompatibleFeature.compressionType)) out.push('zstd compression');
  if (state.corrupt) out.push('the corrupt bit (repair first)');
  if ((header.incompatibleFeatures & ~KNOWN_INCOMPATIBLE) !== 0n) out.push('unknown incompatible features');
  if (state.extensions.bitmaps || has(header.autoclearFeatures, AutoclearFeature.bitmaps)) out.push('persistent bitmaps');
  if (header.cryptMethod !== 0) out.push('encryption');
  if (header.nbSnapshots > 0) out.push('internal snapshots (not handled by ic demote)');
  return out;
}

interface ZeroEntry {
  /** Host offset of the L2 entry. */
  at: number;
  /** Host offset of its cluster (0 for a plain zero cluster). */
  cluster: number;
  copied: boolean;
}

/** Zero-flagged entries of the active L2 tables, and whether expanding them writes clusters of zeros. */
async function zeroEntries(state: Qcow2State): Promise<{ count: number; needZeros: boolean; entries: ZeroEntry[] }> {
  const { io, header, clusterSize, geometry } = state;
  const entries: ZeroEntry[] = [];
  if (header.version !== 3 || geometry.extendedL2) return { count: 0, needZeros: false, entries };
  const seen = new Set<number>();
  for (let index = 0; index < header.l1Size; index++) {
    const l2Offset = (state.l1.getUint32(index * 8) & 0x00ffffff) * TWO_32 + ((state.l1.getUint32(index * 8 + 4) & 0xfffffe00) >>> 0);
    if (l2Offset === 0 || seen.has(l2Offset)) continue;
    seen.add(l2Offset);
    const table = await io.read(l2Offset, clusterSize);
    const view = new DataView(table.buffer, table.byteOffset, table.byteLength);
    for (let entry = 0; entry < geometry.l2Entries; entry++) {
      const high = view.getUint32(entry * 8);
      const low = view.getUint32(entry * 8 + 4);
      if ((high & 0x40000000) !== 0 || (low & 1) === 0) continue;
      entries.push({ at: l2Offset + entry * 8, cluster: (high & 0x00ffffff) * TWO_32 + ((low & 0xfffffe00) >>> 0), copied: (high & 0x80000000) !== 0 });
    }
  }
  // Without a backing file a plain zero cluster can become unallocated; a zero cluster with a host cluster keeps it
  // (its stale bytes overwritten with zeros); over a backing file a plain one needs a cluster of zeros.
  const needZeros = entries.some((entry) => entry.cluster !== 0 || state.backing !== undefined);
  return { count: entries.length, needZeros, entries };
}

/**
 * `ic amend` for qcow2. Returns the new state and what changed. Everything that can refuse is decided before the
 * first write (the file is then byte-identical), except on a dirty image, whose refcounts are rebuilt first when
 * lazy refcounts go or the width changes. The steps run in qemu-img amend's order: upgrade, lazy refcounts,
 * refcount width, downgrade; each one is crash-safe on its own and a rerun finishes what a kill interrupted.
 */
export async function amendImage(state: Qcow2State, bitmaps: readonly BitmapEntry[], options: OptionValues): Promise<{ state: Qcow2State; report: AmendReport }> {
  for (const name of Object.keys(options)) {
    if (!QCOW2_AMEND_OPTIONS.some((option) => option.name === name)) throw unsupportedFeature(`amend cannot change '${name}' (only compat, lazy_refcounts and refcount_bits)`);
  }
  const fromVersion = state.header.version;
  const version = options.compat === undefined ? fromVersion : options.compat === '0.10' || options.compat === 'v2' ? 2 : 3;
  const lazy = options.lazy_refcounts === undefined ? has(state.header.compatibleFeatures, CompatibleFeature.lazyRefcounts) : options.lazy_refcounts === true || options.lazy_refcounts === 'on';
  const bits = options.refcount_bits === undefined ? state.refcounts.bits : Number(options.refcount_bits);
  if (!Number.isInteger(bits) || bits < 1 || bits > 64 || (bits & (bits - 1)) !== 0) throw invalidOption(`refcount_bits must be a power of two from 1 to 64, got ${String(options.refcount_bits)}`);
  const order = Math.log2(bits);
  if (version === 2 && lazy) throw invalidOption('lazy_refcounts requires compat=1.1 (turn it off with lazy_refcounts=off to go to 0.10)');
  if (version === 2 && bits !== 16 && options.refcount_bits !== undefined) throw invalidOption(`refcount widths other than 16 bits require compat=1.1 (refcount_bits=${bits})`);
  if (!state.io.writable) throw new IcError('INVALID', `${FORMAT}: amend needs the image opened for writing`, { format: FORMAT });
  if (version === 2) {
    const blockers = downgradeBlockers(state, bits);
    if (blockers.length > 0) throw unsupportedFeature(`cannot go to compat 0.10 in place: ${blockers.join('; ')}`);
  }
  const upgrade = version === 3 && fromVersion === 2 ? await planVersion3Header(state, lazy) : undefined;
  const widthChanges = bits !== state.refcounts.bits;
  let widthPlan = widthChanges && !state.dirty ? await planWidthChange(state, bitmaps, order) : undefined;

  const changes: string[] = [];
  let current = state;
  if (upgrade) {
    await writeHeaderRegion(current, upgrade);
    current = await loadState(current.io, current.options);
    changes.push('compat 0.10 -> 1.1');
    if (lazy) changes.push('lazy_refcounts off -> on');
  }
  const lazyNow = has(current.header.compatibleFeatures, CompatibleFeature.lazyRefcounts);
  if ((!lazy || widthChanges) && current.dirty) {
    // The refcounts may be stale: rebuild them (check -r all) before the bit that allowed it goes, or before they are copied.
    const repaired = await repairImage(current, bitmaps, 'all');
    if (repaired.report.corruptions > 0 || repaired.state.dirty) throw new IcError('CORRUPT', `${FORMAT}: the refcounts could not be repaired; nothing more was changed`, { format: FORMAT });
    current = repaired.state;
    changes.push('dirty bit resolved (refcounts rebuilt)');
  }
  if (lazy !== lazyNow && current.header.version === 3) {
    await writeFeatureWord(current, HeaderField.compatibleFeatures, lazy ? current.header.compatibleFeatures | CompatibleFeature.lazyRefcounts : current.header.compatibleFeatures & ~CompatibleFeature.lazyRefcounts);
    current = await loadState(current.io, current.options);
    changes.push(`lazy_refcounts ${lazyNow ? 'on' : 'off'} -> ${lazy ? 'on' : 'off'}`);
  }
  if (widthChanges) {
    // The plan made before the upgrade still holds: the upgrade rewrites only the header region of cluster 0.
    widthPlan ??= await planWidthChange(current, bitmaps, order);
    await changeRefcountWidth(current, widthPlan);
    changes.push(`refcount_bits ${current.refcounts.bits} -> ${bits}`);
    current = await loadState(current.io, current.options);
  }
  if (version === 2 && current.header.version === 3) {
    const expanded = await expandZeroClusters(current, bitmaps);
    current = expanded.state;
    if (expanded.count > 0) changes.push(`zero clusters expanded: ${expanded.count}`);
    await writeVersion2Header(current);
    current = await loadState(current.io, current.options);
    changes.push('compat 1.1 -> 0.10');
  }
  return { state: current, report: { changes } };
}

/** The read-only part of a width change: the refcounts must agree with the tables (they are copied), then the plan. */
async function planWidthChange(state: Qcow2State, bitmaps: readonly BitmapEntry[], order: number): Promise<RefcountWidthPlan> {
  const { findings } = await analyseImage(state, bitmaps);
  if (findings.unrepairable + findings.structural + findings.low > 0) throw new IcError('CORRUPT', `${FORMAT}: the image has refcount problems; run check -r all first (nothing was written)`, { format: FORMAT });
  return planRefcountWidth(state, order);
}

/** `ic demote` for qcow2: the named features removed (amend steps), in the order that makes each possible. */
export async function demoteImage(state: Qcow2State, bitmaps: readonly BitmapEntry[], names: readonly string[]): Promise<{ state: Qcow2State; report: AmendReport }> {
  const features = await qcow2Features(state);
  for (const name of names) {
    const feature = features.find((candidate) => candidate.name === name);
    if (!feature) throw invalidOption(`the image does not use feature '${name}' (it uses: ${features.map((f) => f.name).join(', ') || 'none'})`);
    if (!feature.removal.possible) throw unsupportedFeature(`feature '${name}' cannot be removed: ${feature.removal.why}`);
  }
  const wanted = new Set(names);
  // Version 2 has no zero flag, no dirty bit, no lazy refcounts: removing v3 removes them too.
  if (wanted.has('v3')) return amendImage(state, bitmaps, { compat: '0.10', lazy_refcounts: false, refcount_bits: 16 });
  const changes: string[] = [];
  let current = state;
  if (wanted.has('dirty') || wanted.has('lazy_refcounts')) {
    const result = wanted.has('lazy_refcounts') ? await amendImage(current, bitmaps, { lazy_refcounts: false }) : await repairAll(current, bitmaps);
    current = result.state;
    changes.push(...result.report.changes);
  }
  if (wanted.has('refcount_bits')) {
    const result = await amendImage(current, bitmaps, { refcount_bits: 16 });
    current = result.state;
    changes.push(...result.report.changes);
  }
  if (wanted.has('zero_clusters')) {
    const expanded = await expandZeroClusters(current, bitmaps);
    current = expanded.state;
    changes.push(`zero clusters expanded: ${expanded.count}`);
  }
  return { state: current, report: { changes } };
}

async function repairAll(state: Qcow2State, bitmaps: readonly BitmapEntry[]): Promise<{ state: Qcow2State; report: AmendReport }> {
  const repaired = await repairImage(state, bitmaps, 'all');
  if (repaired.state.dirty) throw new IcError('CORRUPT', `${FORMAT}: the refcounts could not be repaired`, { format: FORMAT });
  return { state: repaired.state, report: { changes: ['dirty bit resolved (refcounts rebuilt)'] } };
}

/**
 * Zero-flagged entries of the active tables become entries version 2 understands, reading the same:
 *  - a plain zero entry without a backing file: unallocated (0);
 *  - an entry with a host cluster: that cluster overwritten with zeros (flushed), then the flag cleared;
 *  - a plain zero entry over a backing file: a new cluster of zeros past the end of the file (flushed), the
 *    refcount structure rebuilt to count the new clusters (refcount_bits and all else as before; one header write),
 *    then the entries switched to them.
 * Entries change one 512-byte sector at a time; every entry reads zeros before and after its switch. Killed
 * between the rebuild and the switches, the new clusters are leaks (a rerun's rebuild or check -r leaks frees them).
 */
async function expandZeroClusters(state: Qcow2State, bitmaps: readonly BitmapEntry[]): Promise<{ state: Qcow2State; count: number }> {
  const { io, clusterSize } = state;
  const { entries } = await zeroEntries(state);
  if (entries.length === 0) return { state, count: 0 };
  // A snapshot may share an active table or cluster: changing it in place would change the snapshot.
  if (state.header.nbSnapshots > 0) throw unsupportedFeature('zero clusters of an image with internal snapshots are not expanded in place');
  const allocated = entries.filter((entry) => entry.cluster !== 0);
  const plain = entries.filter((entry) => entry.cluster === 0);
  const zeros = new Uint8Array(clusterSize);
  for (const entry of allocated) await io.write(entry.cluster, zeros);
  const newEntries = new Map<number, bigint>();
  for (const entry of allocated) newEntries.set(entry.at, BigInt(entry.cluster) | (entry.copied ? 1n << 63n : 0n));
  let current = state;
  if (state.backing && plain.length > 0) {
    // New clusters of zeros past everything, counted by a rebuilt refcount structure.
    const { findings } = await analyseImage(state, bitmaps);
    if (findings.unrepairable + findings.structural + findings.low > 0) throw new IcError('CORRUPT', `${FORMAT}: the image has refcount problems; run check -r all first`, { format: FORMAT });
    const first = Math.max(Math.ceil(state.fileSize / clusterSize), findings.clusterCount);
    for (let index = 0; index < plain.length; index++) await io.write((first + index) * clusterSize, zeros);
    await io.flush();
    current = await loadState(io, state.options);
    await rebuildRefcounts(current, findings, { first, count: plain.length });
    plain.forEach((entry, index) => newEntries.set(entry.at, BigInt((first + index) * clusterSize) | (1n << 63n)));
  } else {
    for (const entry of plain) newEntries.set(entry.at, 0n);
  }
  await io.flush();
  // Switch the entries, a sector at a time.
  const bySector = new Map<number, [number, bigint][]>();
  for (const [at, value] of newEntries) {
    const sector = Math.floor(at / SECTOR) * SECTOR;
    const list = bySector.get(sector) ?? [];
    list.push([at, value]);
    bySector.set(sector, list);
  }
  for (const [sector, list] of [...bySector].sort((a, b) => a[0] - b[0])) {
    const bytes = await io.read(sector, SECTOR);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    for (const [at, value] of list) view.setBigUint64(at - sector, value);
    await io.write(sector, bytes);
  }
  await io.flush();
  return { state: await loadState(io, current.options), count: entries.length };
}

async function writeFeatureWord(state: Qcow2State, field: number, value: bigint): Promise<void> {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setBigUint64(0, value);
  await state.io.write(field, bytes);
  await state.io.flush();
}

/**
 * The commit of a downgrade: sector 0 rewritten as a version 2 header (72 bytes), the extensions version 2 keeps
 * (all but the feature name table) and, when it fits, the backing file name; otherwise the name is first copied to
 * a place of cluster 0 the version 3 header does not use (flushed). One 512-byte write, flushed.
 */
async function writeVersion2Header(state: Qcow2State): Promise<void> {
  const { io, header, clusterSize, extensions } = state;
  if (state.dirty || has(header.compatibleFeatures, CompatibleFeature.lazyRefcounts)) throw new IcError('INTERNAL', `${FORMAT}: downgrade before the dirty bit and lazy refcounts are gone`);
  const kept: RawExtension[] = extensions.all.filter((extension) => extension.type !== ExtensionType.featureNameTable);
  const encoded = encodeExtensions(kept);
  const name = state.backingName ? await io.read(state.backingName.offset, state.backingName.length) : new Uint8Array(0);
  let nameOffset = V2_HEADER_LENGTH + encoded.length;
  const inSector = nameOffset + name.length <= SECTOR;
  if (!inSector && name.length > 0) {
    // Past everything the version 3 header region uses, inside cluster 0.
    const used = Math.max(extensions.end, state.backingName ? state.backingName.offset + state.backingName.length : 0, SECTOR);
    nameOffset = Math.ceil(used / 8) * 8;
    if (nameOffset + name.length > clusterSize) throw unsupportedFeature('the backing file name does not fit in cluster 0 next to a version 2 header');
    await io.write(nameOffset, name);
    await io.flush();
  }
  if (V2_HEADER_LENGTH + encoded.length > SECTOR) throw unsupportedFeature('the header extensions do not fit in one sector next to a version 2 header');
  const v2 = encodeHeader({
    ...header,
    version: 2,
    backingFileOffset: name.length > 0 ? nameOffset : 0,
    backingFileSize: name.length,
    incompatibleFeatures: 0n,
    compatibleFeatures: 0n,
    autoclearFeatures: 0n,
    headerLength: V2_HEADER_LENGTH,
  });
  const sector = await io.read(0, SECTOR);
  sector.fill(0, 0, Math.min(SECTOR, Math.max(extensions.end, V2_HEADER_LENGTH + encoded.length)));
  sector.set(v2, 0);
  sector.set(encoded, V2_HEADER_LENGTH);
  if (inSector) sector.set(name, nameOffset);
  await io.write(0, sector);
  await io.flush();
}

/** What an upgrade writes into cluster 0: pieces past sector 0 (first, flushed), then sector 0 (the commit). */
interface HeaderRegionWrites {
  beyond: { offset: number; bytes: Uint8Array }[];
  sector: Uint8Array;
}

/** Extensions qemu's qcow2_update_header writes before the feature name table; the others follow it. */
const BEFORE_FEATURE_NAMES: readonly number[] = [ExtensionType.backingFormat, ExtensionType.externalDataFile, ExtensionType.fullDiskEncryption];

/**
 * The cluster 0 of the version 3 image an upgrade makes, as qemu-img amend lays it out: a 112-byte header (refcount
 * order 4, no feature bits but lazy refcounts when asked), the extensions (qemu 7.2's feature name table added when
 * clusters are 8 KiB or more), the end marker, the backing file name right after it. Whatever lies past sector 0
 * is written before the commit, so it must lie past everything the version 2 header uses; when it would not,
 * the feature name table (optional) is left out and the name copied past the version 2 area instead. Read-only;
 * refuses (one line) what fits in neither way.
 */
async function planVersion3Header(state: Qcow2State, lazy: boolean): Promise<HeaderRegionWrites> {
  const { io, header, clusterSize, extensions } = state;
  const short = state.snapshotTable?.snapshots.find((snapshot) => snapshot.extraDataSize < 16);
  if (short) throw unsupportedFeature(`snapshot '${short.id}' has ${short.extraDataSize} bytes of extra data, version 3 needs 16 (rewriting the snapshot table is not implemented)`);
  const name = state.backingName ? await io.read(state.backingName.offset, state.backingName.length) : new Uint8Array(0);
  const v2End = Math.max(extensions.end, state.backingName ? state.backingName.offset + state.backingName.length : 0);
  const kept = extensions.all.filter((extension) => extension.type !== ExtensionType.featureNameTable);
  const first = kept.filter((extension) => BEFORE_FEATURE_NAMES.includes(extension.type));
  const rest = kept.filter((extension) => !BEFORE_FEATURE_NAMES.includes(extension.type));
  const candidates = clusterSize >= 8192 ? [[...first, featureNameTableExtension(), ...rest], kept] : [kept];
  for (const list of candidates) {
    const encoded = encodeExtensions(list);
    const extensionsEnd = V3_HEADER_LENGTH + encoded.length;
    if (extensionsEnd > SECTOR && v2End > SECTOR) continue;
    let nameOffset = extensionsEnd;
    if (nameOffset + name.length > SECTOR && v2End > Math.max(nameOffset, SECTOR)) nameOffset = Math.ceil(Math.max(v2End, extensionsEnd) / 8) * 8;
    const end = Math.max(extensionsEnd, nameOffset + name.length);
    if (end > clusterSize) continue;
    const region = new Uint8Array(Math.max(SECTOR, end));
    region.set(
      encodeHeader({
        ...header,
        version: 3,
        backingFileOffset: name.length > 0 ? nameOffset : 0,
        backingFileSize: name.length,
        incompatibleFeatures: 0n,
        compatibleFeatures: lazy ? CompatibleFeature.lazyRefcounts : 0n,
        autoclearFeatures: 0n,
        refcountOrder: 4,
        headerLength: V3_HEADER_LENGTH,
        compressionType: 0,
      }),
      0,
    );
    region.set(encoded, V3_HEADER_LENGTH);
    region.set(name, nameOffset);
    const beyond: { offset: number; bytes: Uint8Array }[] = [];
    if (extensionsEnd > SECTOR) beyond.push({ offset: SECTOR, bytes: region.slice(SECTOR, end) });
    else if (nameOffset + name.length > SECTOR) beyond.push({ offset: Math.max(nameOffset, SECTOR), bytes: region.slice(Math.max(nameOffset, SECTOR), end) });
    return { beyond, sector: region.slice(0, SECTOR) };
  }
  throw unsupportedFeature('the version 3 header, its extensions and the backing file name do not fit in cluster 0 next to what the version 2 header uses');
}

/** Writes an upgrade's cluster 0: the pieces past sector 0 (unused by the old header), flush, sector 0, flush. */
async function writeHeaderRegion(state: Qcow2State, writes: HeaderRegionWrites): Promise<void> {
  const { io } = state;
  if (writes.beyond.length > 0) {
    for (const piece of writes.beyond) await io.write(piece.offset, piece.bytes);
    await io.flush();
  }
  await io.write(0, writes.sector);
  await io.flush();
}
