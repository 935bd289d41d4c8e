/** The qemu-img/qemu-io wrappers live in the published kit (@ic/conformance/qemu), so third-party drivers use the same oracle. */
export * from '@ic/conformance/qemu';
