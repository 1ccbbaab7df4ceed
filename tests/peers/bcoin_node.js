#!/usr/bin/env node
// Starts the third-party bcoin node (npm bcoin@1.0.2) for meshd's interop tests, confined to
// loopback: bcoin's own reaches for the outside world (external-IP discovery, UPnP, DNS
// seeds, built-in seed peers) are switched off, so it only talks to the peers a test names
// with --only / --nodes, or to whoever dials its --port.
//
// Usage: node bcoin_node.js --network=regtest --prefix=DIR --port=P --host=127.0.0.1
//          --http-port=H --http-host=127.0.0.1 --no-auth=true [--only=127.0.0.1:PORT] [--spv]
//          [--compact-high-bandwidth] [--debug-log]
//   --compact-high-bandwidth  asks every peer for BIP152 high-bandwidth announcements
//                             (bcoin's pool option blockMode 1, which its config does not read)
//   --debug-log               logs at debug level (bcoin logs its compact-block steps there)
// Env:   BCOIN_DIR  path of node_modules/bcoin
'use strict';

const path = require('path');
const bcoinDir = process.env.BCOIN_DIR;
if (!bcoinDir) {
  console.error('BCOIN_DIR is not set');
  process.exit(2);
}
const spv = process.argv.includes('--spv');
const NodeClass = require(path.join(bcoinDir, 'lib/node', spv ? 'spvnode' : 'fullnode'));
const networks = require(path.join(bcoinDir, 'lib/protocol/networks'));

// No built-in seeds for any network: peers come only from the command line.
for (const type of networks.types)
  networks[type].seeds = [];

const node = new NodeClass({
  config: true,
  argv: true,
  env: true,
  logFile: false,
  logConsole: true,
  logLevel: process.argv.includes('--debug-log')
    ? 'debug'
    : (process.env.BCOIN_LOG_LEVEL || 'info'),
  memory: true,
  workers: false,
  listen: !spv,
  loader: require
});

// Stay on loopback: no external address lookup, no UPnP, no DNS seeds.
node.pool.discoverExternal = async () => {};
node.pool.discoverGateway = async () => {};
node.pool.hosts.discoverSeeds = async () => {};

if (process.argv.includes('--compact-high-bandwidth'))
  node.pool.options.blockMode = 1;

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, async () => {
    try { await node.close(); } catch (e) { /* closing anyway */ }
    process.exit(0);
  });
}
process.on('unhandledRejection', (err) => { console.error(err); process.exit(1); });

(async () => {
  await node.ensure();
  await node.open();
  await node.connect();
  node.startSync();
  console.log('[bcoin-launcher] ready network=%s port=%d spv=%s pid=%d',
    node.network.type, node.pool.options.port, spv, process.pid);
})().catch((err) => {
  console.error(err.stack);
  process.exit(1);
});
