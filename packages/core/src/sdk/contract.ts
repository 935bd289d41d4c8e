import type { Extent, HostRange } from './extent.js';
import type { BlockIO } from './io.js';

/** The version of this contract. A driver built against another major is refused by the registry. */
export const DRIVER_API_VERSION = 1;

/**
 * What a driver can do, as data. Every flag is false unless the driver says otherwise; the engine, the
 * CLI and the conformance suite read these and never a format name.
 */
export interface Capabilities {
  /** open(), info(), map() and read() work on images of this format. */
  read: boolean;
  /** create() makes an empty image of this format. */
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
}

export const CAPABILITY_HELP: Readonly<Record<keyof Capabilities, string>> = {
  read: 'open, describe (info, map) and read images',
  create: 'create empty images',
  backing: 'images can reference a backing file',
  zeroExtents: 'can record zero runs that hide the backing file without storing data',
  check: 'checks image consistency (errors and leaks)',
  inPlaceSource: 'can be converted in place to another format',
  inPlaceTarget: 'can be produced in place from another format',
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
  /** The format's own "structures may be stale" marker (qcow2 dirty bit, QED need-check...). */
  dirty: boolean;
  /** qemu-img's "format-specific" object, when the format has one. */
  formatSpecific?: { type: string; data: Record<string, unknown> };
}

export interface CheckOptions {
  /** Not supported by every driver; a driver that cannot repair says so. */
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
  /** The source map contains zero extents. */
  zeroExtents: boolean;
}

/** What Image.conversionSource() returns: the full description of a source for the in-place engine. */
export interface ConversionSource {
  options: ConversionOptions;
  /** Features in use that no in-place target can keep. Empty when the image can be converted. */
  blockers: ConversionBlocker[];
  /**
   * Every host byte range the format itself occupies (header, extensions, backing name, tables...).
   * Together with the host ranges of the data extents this is everything the source references; the
   * engine never writes there before the commit.
   */
  metadataRanges: HostRange[];
  /**
   * Bytes at offset 0 the format reserves for its header even where they hold nothing (qcow2: cluster 0;
   * QED: header_size clusters). Nothing else may live there; compaction never moves anything into it.
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

/**
 * An allocation unit that can move to another host offset: a data cluster, a table... It is named by exactly
 * one pointer in the file (a table entry or a header field) that fits in one aligned sector, so switching
 * it is one atomic write.
 */
export interface MovableUnit {
  hostOffset: number;
  length: number;
  /** For plans and messages, e.g. "L2 table", "data cluster of guest 65536". */
  role: string;
  /** File offset of the pointer that names this unit. */
  pointerOffset: number;
  /** The pointer's bytes when the unit lives at `hostOffset`. */
  encodePointer(hostOffset: number): Uint8Array;
}

/** An opened image. */
export interface Image {
  readonly format: string;
  info(): ImageInfo;
  /** The whole guest mapping, in guest order, covering [0, virtualSize). */
  map(): AsyncIterable<Extent>;
  /** Guest bytes. Unallocated ranges read from OpenOptions.backing when given, zeros otherwise. */
  read(guestOffset: number, length: number): Promise<Uint8Array>;
  check?(options?: CheckOptions): Promise<CheckReport>;
  conversionSource?(): Promise<ConversionSource>;
  /**
   * Every unit that may move (with conversionSource's metadataRanges, everything the image references).
   * Lets the core compact the file: fill holes left by old metadata, then truncate.
   */
  movableUnits?(): Promise<MovableUnit[]>;
  close(): Promise<void>;
}

/** Where a target has to leave room and what it can address; the planner reads only this. */
export interface TargetLayout {
  /** Guest granularity of the target's mapping, and the host alignment of its data clusters. */
  clusterSize: number;
  /** Bytes at offset 0 that the target's header owns after the commit: no data cluster may stay there. */
  headerRegionSize: number;
  /** A data cluster must end at or below this host offset. */
  maxHostOffset: number;
  /** The target can record zero extents (otherwise the planner turns them into unallocated or zero-filled data). */
  zeroExtents: boolean;
}

/** Hands out host space for target metadata and relocated clusters; owned by the engine. */
export interface SpaceAllocator {
  /** Reserves `length` bytes at an offset aligned to `alignment` (default: the target cluster size). */
  allocate(length: number, alignment?: number): number;
  /** First byte past every allocation and past everything the source references. */
  readonly end: number;
}

/** What a target wants written: metadata into allocated space, then its header at offset 0 as the commit. */
export interface TargetBuild {
  /** Metadata writes; each must lie inside space the allocator handed out. */
  writes: { offset: number; data: Uint8Array }[];
  /** The complete meaningful content of the header region, written last (the commit). */
  header: Uint8Array;
  /** The file length the target needs (at least the allocator's end). */
  fileSize: number;
}

/** Input of a target build: the final mapping, cluster-aligned, made of data, zero and unallocated extents only. */
export interface TargetRequest {
  source: ConversionOptions;
  /** Geometry chosen by the engine (within the driver's clusterSizes). */
  clusterSize: number;
  /** User options (-o), already validated against the driver's option descriptors. */
  options: OptionValues;
  /** info() of the source's backing image, when the caller opened it (OpenOptions.backing). */
  backingInfo?: ImageInfo;
}

export interface InPlaceTarget {
  readonly layout: TargetLayout;
  /** Things in the source this target cannot represent, one sentence each. Empty means convertible. */
  readonly problems: readonly string[];
  build(mapping: readonly Extent[], space: SpaceAllocator): Promise<TargetBuild>;
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
  /**
   * How sure the driver is that `head` (the first bytes of the file, up to 64 KiB) is its format:
   * 0 = not mine, 100 = certain. Raw answers 1 and only wins when nothing else claims the file.
   */
  probe(head: Uint8Array, fileSize: number): number;
  open(io: BlockIO, options?: OpenOptions): Promise<Image>;
  create?(io: BlockIO, spec: CreateSpec): Promise<void>;
  readonly inPlace?: InPlaceTargetFactory;
}

export function hasCapability(driver: Driver, capability: keyof Capabilities): boolean {
  return driver.capabilities[capability] === true;
}
