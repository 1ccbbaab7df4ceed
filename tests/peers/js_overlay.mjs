// An independent libp2p node (js-libp2p 3) for meshd's overlay interop tests: TCP, Noise,
// Yamux, Identify, Ping, Kademlia on meshd's protocol id, GossipSub and a circuit relay v2
// server. It speaks JSON lines: events on stdout, commands on stdin.
//
//   node --import ./polyfill.mjs js_overlay.mjs NETWORK [LISTEN_MULTIADDR ...]
//
// Extra listen addresses may be a relay's circuit (`/ip4/../tcp/../p2p/RELAY/p2p-circuit`):
// the node then holds a reservation there and is reachable through it.
//
// stdout: {"event":"ready","peer_id","addrs"}, {"event":"connected","peer_id"},
//         {"event":"providers","topic","peers":[...]}, {"event":"provided","topic"},
//         {"event":"gossip","topic","data_hex","from"}, {"event":"published","topic"},
//         {"event":"error","what","message"}
// stdin:  {"cmd":"dial","addr"}, {"cmd":"provide","topic"}, {"cmd":"find","topic"},
//         {"cmd":"subscribe","topic"}, {"cmd":"publish","topic","data_hex"}, {"cmd":"stop"}
//
// Topics are found under meshd's DHT key: the sha2-256 multihash of "meshd/topic/TOPIC"
// (a raw CID's multihash here). Exits when stdin closes, on "stop", or after 120 s.
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { gossipsub } from '@libp2p/gossipsub'
import { circuitRelayServer, circuitRelayTransport } from '@libp2p/circuit-relay-v2'
import { multiaddr } from '@multiformats/multiaddr'
import { CID } from 'multiformats/cid'
import { sha256 } from 'multiformats/hashes/sha2'
import * as raw from 'multiformats/codecs/raw'
import { createInterface } from 'node:readline'

const network = process.argv[2] ?? 'regtest'
const extraListen = process.argv.slice(3)
const say = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const hex = (u8) => Buffer.from(u8).toString('hex')

const node = await createLibp2p({
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0', ...extraListen] },
  transports: [tcp(), circuitRelayTransport()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: {
    identify: identify(),
    ping: ping(),
    dht: kadDHT({
      protocol: `/meshd/${network}/kad/1.0.0`,
      clientMode: false,
      // Loopback addresses are all this lab has: keep them.
      peerInfoMapper: passthroughMapper,
    }),
    pubsub: gossipsub({ allowPublishToZeroTopicPeers: true, emitSelf: false }),
    relay: circuitRelayServer(),
  },
})

const topicCid = async (topic) =>
  CID.createV1(raw.code, await sha256.digest(new TextEncoder().encode(`meshd/topic/${topic}`)))

node.addEventListener('peer:connect', (e) => say({ event: 'connected', peer_id: e.detail.toString() }))
node.services.pubsub.addEventListener('message', (e) => {
  const m = e.detail
  say({
    event: 'gossip',
    topic: m.topic,
    data_hex: hex(m.data),
    from: m.type === 'signed' ? m.from.toString() : null,
  })
})

say({
  event: 'ready',
  peer_id: node.peerId.toString(),
  addrs: node.getMultiaddrs().map((a) => a.toString()),
})

const run = async (c) => {
  try {
    switch (c.cmd) {
      case 'dial':
        await node.dial(multiaddr(c.addr))
        break
      case 'provide':
        await node.contentRouting.provide(await topicCid(c.topic))
        say({ event: 'provided', topic: c.topic })
        break
      case 'find': {
        const peers = []
        const signal = AbortSignal.timeout(20000)
        try {
          for await (const p of node.contentRouting.findProviders(await topicCid(c.topic), { signal })) {
            if (!peers.includes(p.id.toString())) peers.push(p.id.toString())
          }
        } catch (err) {
          if (!signal.aborted) throw err
        }
        say({ event: 'providers', topic: c.topic, peers })
        break
      }
      case 'subscribe':
        node.services.pubsub.subscribe(c.topic)
        break
      case 'publish':
        await node.services.pubsub.publish(c.topic, Buffer.from(c.data_hex, 'hex'))
        say({ event: 'published', topic: c.topic })
        break
      case 'stop':
        await node.stop()
        process.exit(0)
    }
  } catch (err) {
    say({ event: 'error', what: c.cmd, message: String(err?.message ?? err) })
  }
}

const lines = createInterface({ input: process.stdin })
lines.on('line', (line) => {
  if (line.trim()) run(JSON.parse(line))
})
lines.on('close', async () => {
  await node.stop()
  process.exit(0)
})
setTimeout(() => process.exit(2), 120000).unref()
