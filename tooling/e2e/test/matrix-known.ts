/**
 * Found when the VDI/VHD and VHDX/Parallels branches met on main (issue #9, open): a prefixed target (VHD) at
 * 1 MiB comes back at 64 KiB because the geometry now reaches down to 64 KiB below a large source cluster size,
 * and an empty Parallels image at 4 KiB clusters leaves two clusters past its last one (qemu counts them leaked).
 */
const GEOMETRY = 'VHD at 1 MiB returns at 64 KiB (geometry), issue #9';
const PARALLELS_TAIL = 'empty Parallels at 4 KiB leaves 2 clusters past its end, issue #9';
const KNOWN_FAILURES = new Map<string, string>([
  ['qcow2 -> vpc -> qcow2: unaligned writes and the last byte, 1048576-byte clusters', GEOMETRY],
  ['qcow2 -> vpc -> qcow2: zero extents, 1048576-byte clusters', GEOMETRY],
  ['qcow2 -> vpc -> qcow2: spread over a large sparse disk, 1048576-byte clusters', GEOMETRY],
  ['qed -> vpc -> qed: unaligned writes and the last byte, 1048576-byte clusters', GEOMETRY],
  ['qed -> vpc -> qed: zero extents, 1048576-byte clusters', GEOMETRY],
  ['qed -> vpc -> qed: spread over a large sparse disk, 1048576-byte clusters', GEOMETRY],
  ['qcow2 -> parallels -> qcow2: empty, 4096-byte clusters', PARALLELS_TAIL],
  ['qed -> parallels -> qed: empty, 4096-byte clusters', PARALLELS_TAIL],
  ['vmdk -> parallels -> vmdk: empty, 4096-byte clusters', PARALLELS_TAIL],
  ['vpc -> parallels -> vpc: empty, 4096-byte clusters', PARALLELS_TAIL],
  ['parallels -> qcow2 -> parallels: empty, 4096-byte clusters', PARALLELS_TAIL],
  ['parallels -> qed -> parallels: empty, 4096-byte clusters', PARALLELS_TAIL],
  ['parallels -> vmdk -> parallels: empty, 4096-byte clusters', PARALLELS_TAIL],
  ['parallels -> vpc -> parallels: empty, 4096-byte clusters', PARALLELS_TAIL],
]);

/** The reason a matrix case is known to fail (registered with it.fails, so a fix has to remove it), if it is. */
export function knownFailures(caseName: string): string | undefined {
  return KNOWN_FAILURES.get(caseName);
}

