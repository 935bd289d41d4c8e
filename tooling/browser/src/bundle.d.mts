import type { BuildResult, Metafile, Plugin } from 'esbuild';

export declare const ENTRY: string;
export declare const OUT_DIR: string;
export declare const OUT_FILE: string;
export declare const noNodeBuiltins: Plugin;
export declare function bundle(options?: { entry?: string; outfile?: string; write?: boolean; minify?: boolean }): Promise<BuildResult & { metafile: Metafile }>;
export declare function sizes(bytes: Uint8Array): { bytes: number; gzip: number };
export declare function checkOtherDrivers(): Promise<BuildResult & { metafile: Metafile }>;
