import { IcError, type BackingReference, type BlockIO, type OpenOptions } from '@ic/core/sdk';
import { corruptAt, FORMAT, hex } from './errors.js';
import { cString, parseExtensions, type HeaderExtensions } from './extensions.js';
import {
  AutoclearFeature,
  clusterSizeOf,
  decodeHeader,
  hasFeature,
  IncompatibleFeature,
  isExtendedL2,
  validateHeader,
  virtualSizeOf,
  type Qcow2Header,
} from './header.js';
import { refcountGeometry, type RefcountGeometry } from './refcount.js';
import { readSnapshotTable, type SnapshotTable } from './snapshots.js';
import { tableGeometry, type TableGeometry } from './tables.js';

/** Everything open() learns from an image before any mapping is walked. */
export interface Qcow2State {
  io: BlockIO;
  options: OpenOptions;
  fileSize: number;
  header: Qcow2Header;
  extensions: HeaderExtensions;
  clusterSize: number;
  /** What qemu reports: the size field rounded down to whole 512-byte sectors. */
  virtualSize: number;
  geometry: TableGeometry;
  refcounts: RefcountGeometry;
  /** The active L1 table (l1_size entries). */
  l1: DataView;
  backing?: BackingReference;
  /** Host range of the backing file name, when there is one. */
  backingName?: { offset: number; length: number };
  snapshotTable?: SnapshotTable;
  dirty: boolean;
  corrupt: boolean;
  hasDataFile: boolean;
  /** Bitmaps count only when the autoclear bit says the extension is consistent (qemu ignores them otherwise). */
  bitmapsActive: boolean;
}

/** Bytes of the file start read to decode the header (the v3 header is at most this long in practice). */
const HEADER_PROBE_LENGTH = 4096;

export async function loadState(io: BlockIO, options: OpenOptions = {}): Promise<Qcow2State> {
  const fileSize = await io.size();
  const head = await io.read(0, Math.min(fileSize, HEADER_PROBE_LENGTH));
  const header = decodeHeader(head);
  validateHeader(header, fileSize);
  const clusterSize = clusterSizeOf(header);

  // Cluster 0 holds the header, the extensions and the backing file name. Without a backing file qemu ignores
  // backing_file_size, so it must not size anything here either (validateHeader bounded it otherwise).
  const areaEnd = header.backingFileOffset !== 0 ? header.backingFileOffset : clusterSize;
  const nameEnd = header.backingFileOffset !== 0 ? header.backingFileOffset + header.backingFileSize : 0;
  // Never more than cluster 0 (at most 2 MiB); validateHeader keeps the name inside it.
  const cluster0Length = Math.min(Math.max(areaEnd, nameEnd), clusterSize);
  const cluster0 = cluster0Length <= head.length ? head : await io.read(0, cluster0Length);
  const extensions = parseExtensions(cluster0, header.headerLength, areaEnd, clusterSize);

  let backing: BackingReference | undefined;
  let backingName: { offset: number; length: number } | undefined;
  if (header.backingFileOffset !== 0) {
    backingName = { offset: header.backingFileOffset, length: header.backingFileSize };
    // qemu keeps the name as a C string: it ends at the first NUL, and an empty one means no backing file at all.
    const name = cString(cluster0.subarray(header.backingFileOffset, header.backingFileOffset + header.backingFileSize));
    if (name !== '') backing = extensions.backingFormat ? { name, format: extensions.backingFormat } : { name };
  }
  const hasDataFile = hasFeature(header.incompatibleFeatures, IncompatibleFeature.externalDataFile);
  if (options.untrusted && backing) {
    throw new IcError('EXTERNAL_REF', `${FORMAT}: image references backing file '${backing.name}' (refused in untrusted mode)`, { format: FORMAT, offset: header.backingFileOffset });
  }
  if (options.untrusted && (hasDataFile || extensions.dataFile !== undefined)) {
    throw new IcError('EXTERNAL_REF', `${FORMAT}: image keeps its data in external file '${extensions.dataFile ?? '?'}' (refused in untrusted mode)`, { format: FORMAT });
  }
  if (hasFeature(header.autoclearFeatures, AutoclearFeature.dataFileRaw) && !hasDataFile) {
    throw corruptAt('autoclear bit data-file-raw is set without an external data file', 88);
  }

  const l1Bytes = header.l1Size > 0 ? await io.read(header.l1TableOffset, header.l1Size * 8) : new Uint8Array(0);

  let snapshotTable: SnapshotTable | undefined;
  if (header.nbSnapshots > 0) {
    snapshotTable = await readSnapshotTable(io, header.snapshotsOffset, header.nbSnapshots, fileSize);
  }
  if (extensions.encryption && extensions.encryption.offset + extensions.encryption.length > fileSize) {
    throw corruptAt(`encryption header ${hex(extensions.encryption.offset)}+${hex(extensions.encryption.length)} runs past the end of the file`);
  }

  return {
    io,
    options,
    fileSize,
    header,
    extensions,
    clusterSize,
    virtualSize: virtualSizeOf(header),
    geometry: tableGeometry(header.clusterBits, { extendedL2: isExtendedL2(header), version: header.version, hasDataFile }),
    refcounts: refcountGeometry(header.clusterBits, header.refcountOrder),
    l1: new DataView(l1Bytes.buffer, l1Bytes.byteOffset, l1Bytes.byteLength),
    ...(backing ? { backing } : {}),
    ...(backingName ? { backingName } : {}),
    ...(snapshotTable ? { snapshotTable } : {}),
    dirty: hasFeature(header.incompatibleFeatures, IncompatibleFeature.dirty),
    corrupt: hasFeature(header.incompatibleFeatures, IncompatibleFeature.corrupt),
    hasDataFile,
    bitmapsActive: extensions.bitmaps !== undefined && hasFeature(header.autoclearFeatures, AutoclearFeature.bitmaps),
  };
}
