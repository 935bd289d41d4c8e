import type { CheckReport } from '@ic/core/sdk';
import { GrainTableReader, GTE_UNALLOCATED, GTE_ZEROED } from './grain-tables.js';
import { SECTOR_SIZE } from './header.js';
import { countOverlaps, NumberList, protectedHeaderEnd, rangesHitting, sparseMetadataRanges } from './host-ranges.js';
import type { SparseVmdkImage } from './image.js';
import { compressedGrainSpan, GRAIN_MARKER_FIELDS, parseGrainMarker } from './stream.js';

/** Problems beyond this many are counted but not listed one by one. */
const MAX_MESSAGES = 100;

/** Grain-sized slots of the file kept as a bitmap at most (64 MiB); beyond, starts are listed and sorted. */
const MAX_BITMAP_SLOTS = 2 ** 29;

/** The starts (sectors) of the slots set in `bitmap`, ascending, as a list more starts can be added to. */
function startsOf(bitmap: Uint32Array, grainSectors: number): NumberList {
  const list = new NumberList();
  for (let word = 0; word < bitmap.length; word++) {
    let bits = bitmap[word]!;
    while (bits !== 0) {
      const bit = 31 - Math.clz32(bits & -bits);
      list.push((word * 32 + bit) * grainSectors);
      bits &= bits - 1;
    }
  }
  return list;
}

/** Starts (sectors) of the set slots whose grain intersects [offset, offset + length) bytes, ascending (like rangesHitting). */
function slotsHitting(bitmap: Uint32Array, grainSectors: number, offset: number, length: number): number[] {
  const first = offset / SECTOR_SIZE;
  const end = (offset + length) / SECTOR_SIZE;
  const hits: number[] = [];
  for (let slot = Math.max(0, Math.floor((first - grainSectors) / grainSectors)); slot * grainSectors < end && slot < bitmap.length * 32; slot++) {
    if (slot * grainSectors + grainSectors <= first) continue;
    if ((bitmap[slot >>> 5]! & (1 << (slot & 31))) !== 0) hits.push(slot * grainSectors);
  }
  return hits;
}

class Findings {
  corruptions = 0;
  checkErrors = 0;
  readonly messages: string[] = [];
  private dropped = 0;

  note(message: string): void {
    if (this.messages.length < MAX_MESSAGES) this.messages.push(message);
    else this.dropped++;
  }

  corruption(message: string): void {
    this.corruptions++;
    this.note(`ERROR: ${message}`);
  }

  finish(): string[] {
    if (this.dropped > 0) this.messages.push(`... and ${this.dropped} more`);
    return this.messages;
  }
}

/**
 * qemu-img check for a sparse extent flags a grain that starts at or past the end of the file (one corruption, then
 * the check fails: exit 1). We count every such grain, plus one check error so the exit status matches. We also count:
 * grains that run past the end of the file or start inside the header/descriptor window, grains that overlap a
 * table or each other, compressed grains with an unreadable marker, and primary/redundant tables that disagree.
 * VMDK has no reference counts, so unused space is not a "leak" for qemu and is not reported as one here.
 */
export async function checkSparse(image: SparseVmdkImage): Promise<CheckReport> {
  const { geometry, fileSize, io, gd, rgd, header } = image.state;
  const findings = new Findings();
  const headerEnd = protectedHeaderEnd(image.state);
  const { grainSectors, grainBytes, gtesPerGT, gtCoverage, virtualSize, zeroedGrains } = geometry;
  // Grain starts at multiples of the grain size (qemu's layout) go to a bitmap, one bit per grain-sized slot of the
  // file (GTEs are 32-bit sectors: at most 2^32 / grainSectors slots); the first start that is not aligned, or that
  // repeats, switches to a list of every start (the bitmap's members first), sorted at the end.
  const slots = Math.ceil(Math.min(Math.ceil(fileSize / SECTOR_SIZE), 2 ** 32) / grainSectors);
  let aligned: Uint32Array | undefined = !geometry.compressed && slots <= MAX_BITMAP_SLOTS ? new Uint32Array(Math.ceil(slots / 32)) : undefined;
  let starts: NumberList | undefined = aligned ? undefined : new NumberList();
  // Compressed grains have their own length each; overlaps among them are found on (start, end) pairs.
  const compressedStarts = new NumberList();
  const compressedEnds = new NumberList();

  // The usual grain lies between the header area and the end of the file (sectors; compressed grains never do here).
  const lowestSector = geometry.compressed ? Infinity : headerEnd / SECTOR_SIZE;
  const highestSector = (fileSize - grainBytes) / SECTOR_SIZE;
  // Power-of-two grain sizes (all of qemu's) number slots with a shift.
  const slotShift = (grainSectors & (grainSectors - 1)) === 0 ? 31 - Math.clz32(grainSectors) : -1;
  const slotMask = grainSectors - 1;

  const reader = new GrainTableReader(io, geometry, gd);
  for (let gdIndex = 0; gdIndex < geometry.gdEntries; gdIndex++) {
    const tableStart = gdIndex * gtCoverage;
    if (tableStart >= virtualSize) break;
    const table = await reader.table(gdIndex);
    if (!table) continue;
    // Entries past the virtual size are not grains of the disk.
    const count = Math.min(gtesPerGT, Math.ceil((virtualSize - tableStart) / grainBytes));
    for (let gtIndex = 0; gtIndex < count; gtIndex++) {
      const gte = table[gtIndex]!;
      if (gte === GTE_UNALLOCATED || (gte === GTE_ZEROED && zeroedGrains)) continue;
      if (gte < lowestSector || gte > highestSector) {
        const hostOffset = gte * SECTOR_SIZE;
        // The unusual grains (and every compressed one) the long way, with messages.
        const where = `grain for guest offset ${tableStart + gtIndex * grainBytes} (GTE ${gtIndex} of table ${gdIndex}, sector ${gte})`;
        if (hostOffset >= fileSize) {
          findings.corruption(`${where} points after EOF`);
          // qemu counts this corruption and then aborts ("Check failed", exit 1); one check error reproduces that.
          findings.checkErrors = 1;
          continue;
        }
        if (hostOffset < headerEnd) findings.corruption(`${where} lies inside the header and descriptor area (first ${headerEnd} bytes)`);
        if (geometry.compressed) {
          const marker = parseGrainMarker(await io.read(hostOffset, GRAIN_MARKER_FIELDS.data));
          if (marker.size === 0 || marker.size > 2 * grainBytes || hostOffset + GRAIN_MARKER_FIELDS.data + marker.size > fileSize) {
            findings.corruption(`${where} has a grain marker claiming ${marker.size} compressed bytes`);
            continue;
          }
          if (marker.lba * SECTOR_SIZE !== tableStart + gtIndex * grainBytes) {
            findings.corruption(`${where} has a grain marker for guest sector ${marker.lba}`);
          }
          compressedStarts.push(gte);
          compressedEnds.push(gte + compressedGrainSpan(marker) / SECTOR_SIZE);
          continue;
        }
        if (hostOffset + grainBytes > fileSize) findings.corruption(`${where} extends past EOF`);
      }
      if (aligned) {
        const slot = slotShift >= 0 ? gte >>> slotShift : gte / grainSectors;
        if (slotShift >= 0 ? (gte & slotMask) === 0 : slot === Math.floor(slot)) {
          const mask = 1 << (slot & 31);
          if ((aligned[slot >>> 5]! & mask) === 0) {
            aligned[slot >>> 5] = aligned[slot >>> 5]! | mask;
            continue;
          }
        }
        starts = startsOf(aligned, grainSectors);
        aligned = undefined;
      }
      starts!.push(gte);
    }
  }

  const metadata = sparseMetadataRanges(image.state);
  if (aligned) {
    // Distinct aligned starts never overlap each other; a metadata range is hit by the slots it reaches into.
    for (const range of metadata) {
      if (range.kind === 'header') continue; // reported above
      for (const hit of slotsHitting(aligned, grainSectors, range.offset, range.length)) {
        findings.corruption(`grain at sector ${hit} overlaps the ${range.role ?? range.kind}`);
      }
    }
  } else if (!geometry.compressed) {
    const sorted = starts!.sorted();
    countOverlaps(sorted, geometry.grainSectors, (a, b) => findings.corruption(`grains at sectors ${a} and ${b} overlap`));
    for (const range of metadata) {
      if (range.kind === 'header') continue; // reported above
      for (const hit of rangesHitting(sorted, geometry.grainSectors, range.offset, range.length)) {
        findings.corruption(`grain at sector ${hit} overlaps the ${range.role ?? range.kind}`);
      }
    }
  } else {
    const count = compressedStarts.length;
    const startOf = compressedStarts.values();
    const endOf = compressedEnds.values();
    const order = new Uint32Array(count).map((_, i) => i).sort((x, y) => startOf[x]! - startOf[y]!);
    let reach = 0;
    let reachStart = 0;
    for (const i of order) {
      if (startOf[i]! < reach) findings.corruption(`compressed grains at sectors ${reachStart} and ${startOf[i]} overlap`);
      if (endOf[i]! > reach) {
        reach = endOf[i]!;
        reachStart = startOf[i]!;
      }
    }
    for (const range of metadata) {
      if (range.kind === 'header') continue;
      const first = range.offset / SECTOR_SIZE;
      const end = (range.offset + range.length) / SECTOR_SIZE;
      for (let i = 0; i < count; i++) {
        if (startOf[i]! < end && first < endOf[i]!) findings.corruption(`compressed grain at sector ${startOf[i]} overlaps the ${range.role ?? range.kind}`);
      }
    }
  }

  if (rgd) {
    const primary = new GrainTableReader(io, geometry, gd);
    const redundant = new GrainTableReader(io, geometry, rgd);
    for (let index = 0; index < geometry.gdEntries; index++) {
      const a = gd.entries[index]!;
      const b = rgd.entries[index]!;
      if ((a === 0) !== (b === 0)) {
        findings.corruption(`grain directory entry ${index} is ${a} but the redundant one is ${b}`);
        continue;
      }
      if (a === 0) continue;
      const tableA = (await primary.table(index))!;
      const tableB = (await redundant.table(index))!;
      for (let i = 0; i < geometry.gtesPerGT; i++) {
        if (tableA[i] !== tableB[i]) findings.corruption(`grain table ${index} entry ${i} is ${tableA[i]} but the redundant copy says ${tableB[i]}`);
      }
    }
  }

  if (!geometry.compressed && gd.entries.some((entry) => entry === 0)) {
    findings.note('note: some grain directory entries are 0 (no grain table); qemu 7.2 cannot write to those ranges');
  }
  if (header.uncleanShutdown !== 0) findings.note('note: uncleanShutdown is set (the disk was not closed cleanly by VMware)');
  return { corruptions: findings.corruptions, leaks: 0, checkErrors: findings.checkErrors, messages: findings.finish() };
}
