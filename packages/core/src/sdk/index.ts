/**
 * @ic/core/sdk — everything a format driver may use, and nothing else: the driver contract, the mapping
 * primitive (Extent), the byte I/O interface, byte helpers and the error type. Browser-safe: nothing here
 * imports a Node module. The guide (docs/writing-a-driver.md) documents every name exported here.
 */
export {
  ByteView,
  toSafeNumber,
  isPowerOfTwo,
  log2,
  alignUp,
  alignDown,
  isAligned,
  isAllZero,
  encodeText,
  concatBytes,
  bytesEqual,
} from './bytes.js';
export {
  DRIVER_API_VERSION,
  CAPABILITY_HELP,
  hasCapability,
  capabilityMismatch,
  type Capabilities,
  type OptionDescriptor,
  type OptionValues,
  type BackingReference,
  type OpenOptions,
  type CreateSpec,
  type ImageInfo,
  type CheckOptions,
  type CheckReport,
  type ConversionBlocker,
  type ImageFeature,
  type AmendReport,
  type ConversionOptions,
  type ConversionSource,
  type HostRangeStream,
  type ExtentStream,
  type PointerFormat,
  type UnitRun,
  type UnitStream,
  type CounterField,
  type ReferenceCounts,
  type Image,
  type Placement,
  type TargetLayout,
  type PlanSummary,
  type TargetEstimate,
  type SpaceAllocator,
  type MetadataWriter,
  type TargetBuild,
  type TargetRequest,
  type MappingBatches,
  type InPlaceTarget,
  type InPlaceTargetFactory,
  type Driver,
} from './contract.js';
export { ClusterBitmap } from './bitmap.js';
export { crc32c } from './crc32c.js';
export { ERROR_CODES, IcError, isIcError, corrupt, unsupported, invalid, type ErrorCode, type ErrorContext } from './errors.js';
export {
  canMerge,
  pushExtent,
  mergeExtents,
  collectExtents,
  extentBatches,
  itemBatches,
  assertCoverage,
  toQemuMapEntry,
  mergeQemuMapEntries,
  type Extent,
  type DataExtent,
  type ZeroExtent,
  type UnallocatedExtent,
  type CompressedExtent,
  type EncryptedExtent,
  type ExtentKind,
  type QemuMapEntry,
  type HostRange,
  type HostRangeKind,
} from './extent.js';
export { MAX_IO_LENGTH, checkRange, readInto, type BlockIO, type ByteRange } from './io.js';
export { readExtents, type ReadExtentsOptions } from './read.js';
