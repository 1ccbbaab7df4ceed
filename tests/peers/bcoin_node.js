#!/usr/bin/env node
// Starts the third-party bcoin node (npm bcoin@1.0.2) for meshd's interop tests, confined to
// loopback: bcoin's own reaches for the outside world (external-IP discovery, UPnP, DNS
// seeds, built-in seed peers) are switched off, so it only talks to the peers a test names
// with --only / --nodes, or to whoever dials its --port.
//
// Usage: node bcoin_node.js --network=regtest --prefix=DIR --port=P --host=127.0.0.1
//          --http-port=H --http-host=127.0.0.1 --no-auth=true [--only=127.0.0.1:PORT] [--spv]
//          [--compact-high-bandwidth] [--bip152-mode-updates] [--debug-log]
//   --compact-high-bandwidth  asks every peer for BIP152 high-bandwidth announcements
//                             (bcoin's pool option blockMode 1, which its config does not read)
//   --bip152-mode-updates     lets a peer's later `sendcmpct` change its announcement mode, as
//                             BIP152's protocol flow (a peer picked as high-bandwidth is sent
//                             sendcmpct(1) later) and Core's ProcessMessage (every sendcmpct
//                             of the agreed version sets the mode); bcoin 1.0.2 keeps only the
//                             first one
//                             (lib/net/peer.js handleSendCmpct), so a peer that, as Core, says
//                             low-bandwidth at verack and asks high-bandwidth later never gets
//                             bcoin's pushes. The patch is this launcher's, not bcoin's.
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

if (process.argv.includes('--bip152-mode-updates')) {
  const Peer = require(path.join(bcoinDir, 'lib/net/peer'));
  const firstSendCmpct = Peer.prototype.handleSendCmpct;
  Peer.prototype.handleSendCmpct = async function (packet) {
    // A later sendcmpct of the version already agreed updates the mode, as in Core; anything
    // else is bcoin's own handling.
    const agreed = this.compactMode !== -1
      && packet.mode <= 1
      && packet.version === (this.compactWitness ? 2 : 1);
    if (!agreed)
      return firstSendCmpct.call(this, packet);
    this.logger.info('Peer updated compact blocks mode (mode=%d, version=%d) (%s).',
      packet.mode, packet.version, this.hostname());
    this.compactMode = packet.mode;
  };
}

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
