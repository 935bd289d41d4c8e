#!/usr/bin/env node
// The `prepack` guard of every publishable package: packing and publishing go through pnpm (`pnpm pack`,
// `pnpm publish`, `changeset publish`), which rewrites `workspace:` dependency ranges into real versions.
// `npm pack` / `npm publish` would ship `workspace:*` ranges that no npm install can resolve, so they stop here.
const agent = process.env.npm_config_user_agent ?? '';
if (!/^pnpm\//.test(agent)) {
  const name = process.env.npm_package_name ?? 'this package';
  const command = process.env.npm_command ?? 'pack';
  console.error(
    `${name}: refusing to ${command} with ${agent.split(' ')[0] || 'this tool'}: use \`pnpm ${command === 'publish' ? 'publish' : 'pack'}\` ` +
      '(it rewrites the workspace: dependency ranges that npm would publish as they are)',
  );
  process.exit(1);
}
