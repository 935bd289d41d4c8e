import type { Extent, HostRange } from './extent.js';
import type { BlockIO } from './io.js';

/**
 * The version of this contract. A driver built against another version is refused by the registry.
 *
 * 2 — map() may yield batches; ConversionSource.metadataRanges() streams typed host ranges and
 *     ConversionOptions lost `zeroExtents`; in-place targets estimate their metadata before building
 *     and write it as they build (streamed mapping, MetadataWriter); TargetLayout states host alignment,
 *     placement and table coverage; units for the mover are runs with declarative pointers;
 *     capabilities are checked against the members a driver implements.
 */
export const DRIVER_API_VERSION = 2;

/**
 * What a driver can do, as data. Every flag is false unless the driver says otherwise. The registry refuses a
 * driver whose flags disagree with its members (create without create(), inPlaceTarget without inPlace, and
 * the reverse); the conformance kit checks the image-level ones (check, inPlaceSource) on real images.
 */
export interface Capabilities {
  /** open(), info(), map() and read() work on images of this format. */
  read: boolean;
  /** driver.create() makes an empty image of this format. */
  create: boolean;
  /** Images of this format can name a backing file. */
  backing: boolean;
  /** The format can record "reads as zero and hides the backing file" without storing data. */
  zeroExtents: boolean;
  /** Image.check() validates the structures and counts errors and leaks. */
  check: boolean;
  /** Image.conversionSource() describes the image for an in-place conversion away from this format. */
  inPlaceSource: boolean;
  /** driver.inPlace builds this format's metadata around data that already sits in a file. */
  inPlaceTarget: boolean;
  /** Image.check({ repair }) repairs what `qemu-img check -r leaks|all` repairs (needs the image opened for writing). */
  repair?: boolean;
  /**
   * An image of this format is the guest's bytes and nothing else (guest byte g at file byte g, the file as long as
   * the disk): an in-place conversion to it (`ic convert-inplace IMAGE raw`) moves every data unit of the source
   * to its guest offset, zero-fills the rest and drops the source's metadata (engine/to-identity.ts). Needs
   * nothing from the driver beyond open() (recovery opens the result with it).
   */
  identityTarget?: boolean;
}

export const CAPABILITY_HELP: Readonly<Record<keyof Capabilities, string>> = {
  read: 'open, describe (info, map) and read images',
  create: 'create empty images',
  backing: 'images can reference a backing file',
  zeroExtents: 'can record zero runs that hide the backing file without storing data',
  check: 'checks image consistency (errors and leaks)',
  inPlaceSource: 'can be converted in place to another format',
  inPlaceTarget: 'can be produced in place from another format',
  repair: 'check -r leaks|all repairs the image in place',
  identityTarget: 'images are the guest bytes alone: sources with movable units convert to it in place',
};

/** A creation or conversion option, described as data so that the CLI can list, parse and validate it. */
export interface OptionDescriptor {
  name: string;
  type: 'string' | 'boolean' | 'size' | 'enum' | 'integer';
  /** Allowed values for 'enum'. */
  values?: readonly string[];
  default?: string | number | boolean;
  help: string;
}

export type OptionValues = Readonly<Record<string, string | number | boolean>>;

/** A reference to a backing file, as stored in the image (the name is never resolved by a driver). */
export interface BackingReference {
  /** The name exactly as stored. */
  name: string;
  /** The backing file's format when the image records it; undefined means "probe it". */
  format?: string;
}

export interface OpenOptions {
  /** Refuse images that reference other files (backing, external data). */
  untrusted?: boolean;
  /** Image whose content unallocated extents fall through to, when the caller opened the backing file. */
  backing?: Image;
  /**
   * Opens, read-only, another file the image names for its own data (a VMDK extent file), resolved relative
   * to the image by the caller. Absent when the caller does not allow that (untrusted mode, or no file
   * system): the driver then describes what it can and refuses what needs the other file.
   */
  openFile?: (name: string) => Promise<BlockIO>;
  /** Decompressor for formats with compressed clusters (zlib/deflate streams). */
  inflate?: (data: Uint8Array, kind: 'zlib' | 'deflate-raw') => Uint8Array;
}

export interface CreateSpec {
  virtualSize: number;
  backing?: BackingReference;
  /** info() of the backing image, when the caller opened it (some formats record facts about their parent). */
  backingInfo?: ImageInfo;
  options: OptionValues;
}

/** What `info` reports; field names map to qemu-img's JSON in the CLI. */
export interface ImageInfo {
  format: string;
  virtualSize: number;
  clusterSize?: number;
  backing?: BackingReference;
  /**
   * The format's own "structures may be stale" marker (qcow2 dirty bit, QED need-check...). Left out only where
   * qemu-img info prints no dirty flag for the format (its qemu driver has no get_info, as Parallels).
   */
  dirty?: boolean;
  /** qemu-img's "format-specific" object, when the format has one. */
  formatSpecific?: { type: string; data: Record<string, unknown> };
}

export interface CheckOptions {
  /**
   * qemu-img check -r: 'leaks' frees leaked space, 'all' also repairs corruptions. Only drivers claiming capability
   * 'repair'; the image must be opened on a writable BlockIO. The report then gives what is left after the repair,
   * with corruptionsFixed and leaksFixed; damage the driver cannot repair safely is refused before anything is written.
   */
  repair?: 'leaks' | 'all';
}

/** Result of Image.check(); field names follow qemu-img check --output=json. */
export interface CheckReport {
  /** Corruptions found: anything that can make a reader return wrong data. */
  corruptions: number;
  /** Clusters in use by no structure but still counted as in use. Harmless. */
  leaks: number;
  /** Errors reading the metadata itself. */
  checkErrors: number;
  totalClusters?: number;
  allocatedClusters?: number;
  fragmentedClusters?: number;
  compressedClusters?: number;
  imageEndOffset?: number;
  corruptionsFixed?: number;
  leaksFixed?: number;
  /** One line per problem, for humans. */
  messages: string[];
}

/**
 * A feature an image uses, as data (`ic info --features`, `ic demote`). Kinds follow qcow2's three words, which
 * every format's flags fit: 'incompatible' (a reader that does not know it must not open the image),
 * 'compatible' (may be ignored), 'autoclear' (may be ignored, but a writer that does not know it must clear it:
 * it says some structure is in sync).
 */
export interface ImageFeature {
  /** Short name, stable (demote --feature takes it), e.g. "lazy_refcounts", "zero_clusters". */
  name: string;
  kind: 'compatible' | 'incompatible' | 'autoclear';
  /** One line. */
  description: string;
  /**
   * Whether Image.demote() can remove it so that an older reader opens the image, and what that costs:
   * 'header' (a header write), 'metadata' (table writes, a refcount rebuild), 'zeros' (clusters of zeros written),
   * 'data' (data moved or rewritten). Otherwise why not.
   */
  removal: { possible: true; cost: 'header' | 'metadata' | 'zeros' | 'data'; how: string } | { possible: false; why: string };
}

/** What Image.amend() or Image.demote() changed. */
export interface AmendReport {
  /** One line per change made, in order ("compat 1.1 -> 0.10", "zero clusters expanded: 3"...). */
  changes: string[];
}

/** An image feature in use that prevents an in-place conversion, with the way out. */
export interface ConversionBlocker {
  /** Short name, e.g. "compressed clusters". */
  feature: string;
  /** One sentence: why it blocks and what to do instead. */
  reason: string;
}

/** Everything a target must be able to represent to take over an image in place. */
export interface ConversionOptions {
  virtualSize: number;
  /** The source's allocation unit in bytes: the target cluster size that keeps every data cluster in place. */
  clusterSize: number;
  backing?: BackingReference;
}

/** Host ranges, singly or in batches, in any order. */
export type HostRangeStream = Iterable<HostRange | readonly HostRange[]> | AsyncIterable<HostRange | readonly HostRange[]>;

/** What Image.conversionSource() returns: the full description of a source for the in-place engine. */
export interface ConversionSource {
  options: ConversionOptions;
  /** Features in use that no in-place target can keep. Empty when the image can be converted. */
  blockers: ConversionBlocker[];
  /**
   * Every host byte range the format itself occupies (header, extensions, backing name, tables...), with its
   * kind ('header' or 'metadata'). Together with the host ranges of the map's data and zero extents this is
   * everything the source references; the engine never writes there before the commit and refuses a source
   * whose ranges overlap. Called once per conversion; may stream (tables of a large image).
   */
  metadataRanges(): HostRangeStream;
  /**
   * The mapping the engine converts, when the driver validates more strictly for a conversion than for a read
   * (reserved bits qemu ignores on reads, say). Default: the image's map(). Called once per pass.
   */
  map?(): ExtentStream;
  /**
   * Bytes at offset 0 the format reserves for its header even where they hold nothing (qcow2: cluster 0;
   * QED: header_size clusters). Nothing else may live there; packing never moves anything into it.
   * Default 0.
   */
  headerRegionSize?: number;
  /**
   * Zero extents that carry a hostOffset really read as zeros at that host range (file-system holes of a
   * raw file), so a target cluster mixing them with data can stay in place. Default false (a qcow2
   * zero-allocated cluster may hold stale bytes).
   */
  zeroHostRangesReadAsZero?: boolean;
}

/** The mapping of an image: extents in guest order, singly or in arrays (batches are much faster for big maps). */
export type ExtentStream = AsyncIterable<Extent | readonly Extent[]> | Iterable<Extent | readonly Extent[]>;

/**
 * How a pointer in the file encodes the host offset of the unit it names: `value = (hostOffset - base) / unit`,
 * stored in `encoding`, with `flags` OR-ed in. QED table entries: u64le, unit 1. qcow2 L2 entries: u64be,
 * unit 1, flags 2^63 (COPIED). VMDK grain table entries: u32le, unit 512. VDI block map: u32le, unit block size,
 * base data offset.
 */
export interface PointerFormat {
  encoding: 'u32le' | 'u32be' | 'u64le' | 'u64be';
  /** Bytes per pointer value step (1 for byte offsets, 512 for sector numbers). Default 1. */
  unit?: number;
  /** Host offset that the value 0 means. Default 0. */
  base?: number;
  /** Bits OR-ed into the stored value (a flag that must stay set). Default 0. */
  flags?: bigint;
  /**
   * The whole stored value that means "reads as zeros, hides the backing file", where the format has one (QED: 1;
   * VMDK with zeroed grains: 1). Compaction switches an all-zero data unit to it when the image has a backing file.
   */
  zeroValue?: bigint;
  /** The whole stored value that means "unallocated" (QED and VMDK: 0); compaction uses it when nothing shows through. */
  unallocatedValue?: bigint;
}

/**
 * A run of movable units: `count` units of `unitLength` bytes each, host-contiguous from `hostOffset`, each named
 * by exactly one pointer (a table entry or a header field) that fits in one aligned 512-byte sector. The first
 * unit's pointer is at file offset `pointerOffset`, the next one's `pointerStride` bytes further.
 */
export interface UnitRun {
  /** 'data' units hold guest data; 'table' units hold metadata (their pointers may live in other units). */
  kind: 'data' | 'table';
  hostOffset: number;
  unitLength: number;
  count: number;
  pointerOffset: number;
  pointerStride: number;
  pointer: PointerFormat;
  /**
   * A second pointer naming the same unit (a redundant copy of its table, VMDK's RGT), same format and stride:
   * every switch writes both, in the same logged wave.
   */
  mirrorPointerOffset?: number;
  /** For plans and messages, e.g. "L2 table 3". */
  role?: string;
}

/** Unit runs, singly or in batches, in any order. */
export type UnitStream = AsyncIterable<UnitRun | readonly UnitRun[]> | Iterable<UnitRun | readonly UnitRun[]>;

/**
 * Where one reference count is stored in the file: an unsigned field of `bits` bits that lies inside one aligned
 * 512-byte sector. Fields of 8 bits and more are whole bytes (big-endian unless `littleEndian`); narrower ones are
 * packed in a byte, their least significant bit at bit `shift` (qcow2's refcount_bits 1, 2 and 4).
 */
export interface CounterField {
  offset: number;
  bits: 1 | 2 | 4 | 8 | 16 | 32 | 64;
  shift?: number;
  littleEndian?: boolean;
}

/**
 * The reference counts of a format whose clusters carry one (qcow2's refcount blocks), for the mover: every cluster
 * a listed unit occupies counts 1, a cluster nothing references counts 0 (more is a leak). In each wave the engine
 * sets the counters of the new places to 1 before the pointer switches and those of the old places (and of units
 * switched to zero or unallocated) to 0 after them, each step logged and flushed, and clears the counters of the
 * clusters it cuts off the file's end; so a crash at any write leaves at worst leaked clusters (counted 1, named by
 * nothing), which `recover`'s packing fills or cuts off. The counters themselves must lie in structures that are
 * not units (conversionSource's metadataRanges): they never move.
 */
export interface ReferenceCounts {
  /** Every host cluster below this offset has a counter (its refcount block exists); nothing is moved to or past it. */
  readonly coveredEnd: number;
  /** The counter of the host cluster at `hostOffset` (cluster-aligned, below coveredEnd). Used after the image is closed. */
  counter(hostOffset: number): CounterField;
}

/** An opened image. */
export interface Image {
  readonly format: string;
  info(): ImageInfo;
  /** The whole guest mapping, in guest order, covering [0, virtualSize). Each call starts a new walk. */
  map(): ExtentStream;
  /** Guest bytes. Unallocated ranges read from OpenOptions.backing when given, zeros otherwise. */
  read(guestOffset: number, length: number): Promise<Uint8Array>;
  check?(options?: CheckOptions): Promise<CheckReport>;
  conversionSource?(): Promise<ConversionSource>;
  /** The features this image uses (optional member: drivers without it list none). */
  features?(): Promise<ImageFeature[]>;
  /**
   * Changes header-level options in place (`ic amend -o`), crash-safely, on a writable BlockIO; options not named
   * keep their values. Names and values are the driver's `amendOptions`, validated by the caller.
   */
  amend?(options: OptionValues): Promise<AmendReport>;
  /** Removes the named features (from features(), all removable), crash-safely, on a writable BlockIO. */
  demote?(features: readonly string[]): Promise<AmendReport>;
  /**
   * Every unit of the file that may move: with the header region and the fixed ranges of conversionSource, this is
   * everything the image references. Present only for formats whose pointer switches are plain writes, or whose
   * reference counts the image describes with referenceCounts(). The engine uses it to pack the file (fill holes,
   * then truncate) and to move units (defrag, compact, convert-inplace to raw).
   */
  units?(): UnitStream;
  /**
   * Optional, with units(): the reference counts that must follow every move (see ReferenceCounts). A format with
   * reference counts that lacks it must not list units.
   */
  referenceCounts?(): Promise<ReferenceCounts>;
  close(): Promise<void>;
}

/**
 * Where a target's data clusters may live.
 *  - 'anywhere': any host offset that is a multiple of hostAlignment (qcow2, QED, VMDK).
 *  - 'packed': cluster k of the allocation order at start + k * clusterSize, with no gap (VDI: new blocks are
 *    appended at index blocks_allocated).
 *  - 'prefixed': each data cluster is preceded by `prefix` bytes that belong to it and that the target writes
 *    (dynamic VHD: a block's sector bitmap lies right before its data); a cluster stays only where those bytes
 *    are free.
 *  - 'identity': guest offset g lives at host offset g (raw, fixed VHD); nothing can be relocated.
 */
export type Placement = { kind: 'anywhere' } | { kind: 'packed'; start: number } | { kind: 'prefixed'; prefix: number } | { kind: 'identity' };

/** Where a target has to leave room and what it can address; the planner reads only this. */
export interface TargetLayout {
  /** Guest granularity of the target's mapping (its cluster, grain or block size). */
  clusterSize: number;
  /** A kept data cluster must start at a host offset that is a multiple of this. Default clusterSize. */
  hostAlignment?: number;
  /**
   * Bytes that the target's header owns after the commit, at headerOffset: no data cluster may stay there. The
   * commit writes the header there (last).
   */
  headerRegionSize: number;
  /** Where the header region starts: 0 (default) for a header, the virtual size for a footer-only format (fixed VHD). */
  headerOffset?: number;
  /** A data cluster must end at or below this host offset. */
  maxHostOffset: number;
  /** The target can record zero extents (otherwise the planner turns them into unallocated or zero-filled data). */
  zeroExtents: boolean;
  /** Default { kind: 'anywhere' }. */
  placement?: Placement;
  /**
   * The format counts every cluster of the file that nothing references as a leak (QED: no reference counts).
   * The engine then packs the file after the commit, through the image's units(). Default false.
   */
  unreferencedClustersLeak?: boolean;
  /**
   * The format's check measures the image's end from its highest data cluster, and from offset 0 when there is
   * none (qemu 7.2's Parallels check: image end = highest cluster + one cluster), so an image without data shows
   * every cluster of its header region past the first as leaked. The planner then stores the disk's last cluster
   * as zeros (a 'zero-fill' relocation, counted as relocated) when no cluster holds data, and writeImage does the
   * same. Default false.
   */
  needsDataCluster?: boolean;
  /**
   * Guest bytes one second-level table covers (qcow2/QED L2 table, VMDK grain table), when the target's
   * metadata grows with the number of tables holding something: the plan summary counts those tables.
   */
  tableCoverage?: number;
}

/** What a plan amounts to, for a target to size its metadata before building it. */
export interface PlanSummary {
  virtualSize: number;
  clusterSize: number;
  /** Target clusters that map data (kept or relocated). */
  dataClusters: number;
  zeroClusters: number;
  relocatedClusters: number;
  /** Distinct tableCoverage windows that hold data or zero clusters (0 without tableCoverage). */
  tablesUsed: number;
  /** First host offset the allocator hands out (past everything the source references). */
  spaceStart: number;
  /** End of the kept data clusters (host). */
  keptDataEnd: number;
}

export interface TargetEstimate {
  /** An upper bound of the bytes the target will allocate (tables, directories, refcounts), alignment included. */
  metadataBytes: number;
}

/** Hands out host space for target metadata and relocated clusters; owned by the engine. */
export interface SpaceAllocator {
  /**
   * Reserves `length` bytes at an offset aligned to `alignment` (default: the target cluster size). The space
   * lies past everything the source references and reads as zeros until written.
   */
  allocate(length: number, alignment?: number): number;
  /** First byte past every allocation and past everything the source references. */
  readonly end: number;
}

/** Where a target writes its metadata while it builds: only into space its allocator handed out. */
export interface MetadataWriter {
  /** Done with `data` once the promise resolves (copied or written): a target may fill the same buffer again. */
  write(offset: number, data: Uint8Array): Promise<void>;
}

/** What a target returns once its metadata is written: its header, written last at the layout's headerOffset (the commit). */
export interface TargetBuild {
  /** The complete meaningful content of the header region. */
  header: Uint8Array;
  /** The file length the target needs (at least the allocator's end). */
  fileSize: number;
}

/** Input of a target: the geometry chosen by the engine and what the source needs represented. */
export interface TargetRequest {
  source: ConversionOptions;
  /** Geometry chosen by the engine (within the driver's clusterSizes). */
  clusterSize: number;
  /** User options (-o), already validated against the driver's option descriptors. */
  options: OptionValues;
  /** info() of the source's backing image, when the caller opened it (OpenOptions.backing). */
  backingInfo?: ImageInfo;
}

/** The final mapping handed to a target: batches of data, zero and unallocated extents, cluster-aligned, in guest order. */
export type MappingBatches = AsyncIterable<readonly Extent[]>;

export interface InPlaceTarget {
  readonly layout: TargetLayout;
  /** Things in the source this target cannot represent, one sentence each. Empty means convertible. */
  readonly problems: readonly string[];
  /** Sizes the metadata for a plan (an upper bound); the engine reserves that much before building. */
  estimate(summary: PlanSummary): TargetEstimate;
  /**
   * Consumes the mapping once, in guest order, writing tables through `out` as they fill (never holding the
   * whole metadata of a large image), and returns the header. Every data extent lies at a host offset the
   * layout allows; the engine has checked that no two of them share a cluster.
   */
  build(mapping: MappingBatches, space: SpaceAllocator, out: MetadataWriter): Promise<TargetBuild>;
}

/** The in-place target side of a driver. */
export interface InPlaceTargetFactory {
  /** Cluster sizes the target can use (powers of two). */
  clusterSizes: { min: number; max: number };
  /** User options that change the target's geometry; a cluster size given here wins over the engine's choice. */
  clusterSizeOption?: string;
  create(request: TargetRequest): InPlaceTarget;
}

/** A format driver: a plain object, registered with a Registry. */
export interface Driver {
  /** The qemu-img format name ("qcow2", "qed", ...). */
  readonly name: string;
  readonly description: string;
  /** The driver package's version. */
  readonly version: string;
  readonly apiVersion: number;
  readonly capabilities: Readonly<Partial<Capabilities>>;
  /** Options accepted by create() and by an in-place conversion to this format. */
  readonly options?: readonly OptionDescriptor[];
  /** Options Image.amend() accepts (qemu-img amend's names where qemu has them). */
  readonly amendOptions?: readonly OptionDescriptor[];
  /**
   * How sure the driver is that `head` (the first bytes of the file, up to 64 KiB) is its format:
   * 0 = not mine, 100 = certain. Raw answers 1 and only wins when nothing else claims the file.
   * `tail` is the last 64 KiB of the file (formats with a footer, such as VHD, look there).
   */
  probe(head: Uint8Array, fileSize: number, tail?: Uint8Array): number;
  open(io: BlockIO, options?: OpenOptions): Promise<Image>;
  create?(io: BlockIO, spec: CreateSpec): Promise<void>;
  readonly inPlace?: InPlaceTargetFactory;
}

export function hasCapability(driver: Driver, capability: keyof Capabilities): boolean {
  return driver.capabilities[capability] === true;
}

/**
 * Why a driver's declared capabilities disagree with the members it implements, or undefined when they agree.
 * Only driver-level members can be checked here; image-level ones (check, conversionSource) are checked by the
 * conformance kit on real images.
 */
export function capabilityMismatch(driver: Driver): string | undefined {
  const pairs: [keyof Capabilities, boolean, string][] = [
    ['create', typeof driver.create === 'function', 'create()'],
    ['inPlaceTarget', typeof driver.inPlace?.create === 'function', 'inPlace.create()'],
  ];
  for (const [capability, present, member] of pairs) {
    if (hasCapability(driver, capability) && !present) return `driver ${driver.name} claims capability '${capability}' but has no ${member}`;
    if (!hasCapability(driver, capability) && present) return `driver ${driver.name} has ${member} but does not claim capability '${capability}'`;
  }
  return undefined;
}
