// A js-libp2p kad-dht node on /p2pnet/kad/1.0.0, for checking interoperability with
// p2pnet's DHT (scripts/interop/run_js_interop.py drives it; docs/interop.md).
//
// Loopback only: it listens on 127.0.0.1, its connection gater refuses to dial any
// address outside 127.0.0.0/8 and ::1, and it has no peer discovery (no mDNS, no
// bootstrap list). It dials only what it is told to.
//
// Control: one JSON object per line on stdin, one JSON object per line on stdout.
//   stdout, once at start:  {"event":"ready","peer_id":...,"addrs":[...],"pk_record":{...}}
//   request:                {"id":1,"cmd":"dial","addr":"/ip4/127.0.0.1/tcp/N/p2p/12D3..."}
//   reply:                  {"id":1,"ok":true,...}  or  {"id":1,"ok":false,"error":"..."}
// Commands (every one bounded by "timeout_ms", default 20000):
//   info                                      peer ID, addresses, routing table
//   dial            addr                      connect; wait until the peer is in the
//                                             routing table (wait_table, default true)
//   routing_table                             peer IDs in the routing table
//   wait_table      peer_ids                  wait until all are in the routing table
//   provide         key_hex                   dht.provide(CIDv1 raw of the multihash)
//   find_providers  key_hex [count]           dht.findProviders(...)
//   local_providers key_hex                   providers this node holds for the key
//   find_peer       peer_id                   dht.findPeer(..., {useCache: false})
//   get_closest_peers key_hex                 dht.getClosestPeers(...)
//   ping            peer_id                   libp2p ping (/ipfs/ping/1.0.0)
//   kad_request     peer_id type [key_hex]    one raw kad request (e.g. PING)
//   put             key_hex value_hex         dht.put(...)
//   get             key_hex                   dht.get(...)
//   set_validator   namespace mode            mode "accept": take any value under
//                                             /<namespace>/; "none": js defaults
//   stop                                      stop the node and exit 0
// It also serves /p2pnet-interop/bulk/1.0.0 (bulk transfer, see BULK_PROTOCOL below).
// The process also exits when stdin closes, and after --max-seconds (default 600).
// Diagnostics go to stderr; set DEBUG=libp2p:kad-dht* for js-libp2p's own logs.

// js-libp2p 3.x uses Promise.withResolvers (ES2024), which Node 20 lacks. The polyfill
// must exist before any libp2p module is evaluated, hence the dynamic imports below.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve
    let reject
    const promise = new this((res, rej) => {
      resolve = res
      reject = rej
    })
    return { promise, resolve, reject }
  }
}

const { createLibp2p } = await import('libp2p')
const { tcp } = await import('@libp2p/tcp')
const { noise } = await import('@chainsafe/libp2p-noise')
const { yamux } = await import('@chainsafe/libp2p-yamux')
const { identify } = await import('@libp2p/identify')
const { ping } = await import('@libp2p/ping')
const { kadDHT, passthroughMapper, MessageType } = await import('@libp2p/kad-dht')
const { multiaddr } = await import('@multiformats/multiaddr')
const { peerIdFromString } = await import('@libp2p/peer-id')
const { publicKeyToProtobuf } = await import('@libp2p/crypto/keys')
const { CID } = await import('multiformats/cid')
const Digest = await import('multiformats/hashes/digest')
const readline = await import('node:readline')
const { createHash, randomBytes } = await import('node:crypto')

const PROTOCOL = '/p2pnet/kad/1.0.0'
const RAW_CODEC = 0x55
const DEFAULT_TIMEOUT_MS = 20_000

function argValue (name, fallback) {
  const i = process.argv.indexOf(name)
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback
}
const MAX_SECONDS = Number(argValue('--max-seconds', '600'))
const LISTEN = argValue('--listen', '/ip4/127.0.0.1/tcp/0')

function isLoopback (ma) {
  const text = ma.toString()
  return /^\/ip4\/127\.\d+\.\d+\.\d+(\/|$)/.test(text) || /^\/ip6\/::1(\/|$)/.test(text)
}

// Bulk transfer, p2pnet always the client (docs/interop.md, "Bulk transfer"). The
// request is 9 bytes: op (1 byte) and n (u64, big-endian, at most BULK_MAX_BYTES).
//   op 1 (put): the client sends n bytes; the server answers u64 count + sha256 of them.
//   op 2 (get): the server sends n bytes, then the sha256 of those n bytes.
// The server closes the stream after its answer; anything else gets the stream aborted.
const BULK_PROTOCOL = '/p2pnet-interop/bulk/1.0.0'
const BULK_PUT = 1
const BULK_GET = 2
const BULK_MAX_BYTES = 2 ** 30
const BULK_CHUNK = 1 << 20

const hex = (bytes) => Buffer.from(bytes).toString('hex')
const unhex = (text) => new Uint8Array(Buffer.from(text, 'hex'))
const log = (...args) => process.stderr.write(`[js_node] ${args.join(' ')}\n`)

function send (obj) {
  if (!process.stdout.writable) return
  process.stdout.write(JSON.stringify(obj) + '\n')
}

const node = await createLibp2p({
  addresses: { listen: [LISTEN] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  peerDiscovery: [],
  connectionGater: {
    // Never dial anything but loopback, whatever a peer tells us.
    denyDialMultiaddr: (ma) => !isLoopback(ma)
  },
  connectionManager: {
    dialTimeout: 5_000
  },
  services: {
    identify: identify(),
    ping: ping(),
    dht: kadDHT({
      protocol: PROTOCOL,
      clientMode: false,
      // The default mapper (removePrivateAddressesMapper) drops loopback addresses,
      // which are the only ones in this test.
      peerInfoMapper: passthroughMapper
    })
  }
})
await node.start()
const dht = node.services.dht

function u64 (n) {
  const out = new Uint8Array(8)
  new DataView(out.buffer).setBigUint64(0, BigInt(n))
  return out
}

// Send data, waiting for the stream to drain when its write buffer is full.
async function sendAll (stream, data) {
  if (!stream.send(data)) await stream.onDrain()
}

async function serveBulk (stream) {
  const header = new Uint8Array(9)
  let have = 0
  let op = 0
  let n = 0
  let got = 0
  const hash = createHash('sha256')
  for await (const piece of stream) {
    let chunk = piece instanceof Uint8Array ? piece : piece.subarray()
    if (have < 9) {
      const take = Math.min(9 - have, chunk.length)
      header.set(chunk.subarray(0, take), have)
      have += take
      chunk = chunk.subarray(take)
      if (have < 9) continue
      op = header[0]
      const size = new DataView(header.buffer).getBigUint64(1)
      if ((op !== BULK_PUT && op !== BULK_GET) || size > BigInt(BULK_MAX_BYTES)) {
        throw new Error(`bad bulk request: op ${op}, ${size} bytes`)
      }
      n = Number(size)
      if (op === BULK_GET) break
    }
    if (chunk.length > n - got) throw new Error(`bulk put: more than the ${n} bytes announced`)
    hash.update(chunk)
    got += chunk.length
    if (got === n) break
  }
  if (have < 9) throw new Error('bulk: stream ended inside the request')
  if (op === BULK_PUT) {
    if (got < n) throw new Error(`bulk put: stream ended after ${got} of ${n} bytes`)
    const answer = new Uint8Array(40)
    answer.set(u64(got), 0)
    answer.set(hash.digest(), 8)
    await sendAll(stream, answer)
  } else {
    const block = randomBytes(BULK_CHUNK)
    for (let sent = 0; sent < n;) {
      const piece = block.subarray(0, Math.min(BULK_CHUNK, n - sent))
      hash.update(piece)
      await sendAll(stream, piece)
      sent += piece.length
    }
    await sendAll(stream, hash.digest())
  }
  await stream.close()
}

await node.handle(BULK_PROTOCOL, (stream) => {
  serveBulk(stream).catch((err) => {
    log('bulk:', errText(err))
    stream.abort(err instanceof Error ? err : new Error(String(err)))
  })
})
const selfPk = {
  key_hex: hex(new Uint8Array([...Buffer.from('/pk/'), ...node.peerId.toMultihash().bytes])),
  value_hex: hex(publicKeyToProtobuf(node.peerId.publicKey))
}

function addrsOf (peerInfo) {
  return (peerInfo.multiaddrs ?? []).map((ma) => ma.toString())
}

function errText (err) {
  if (err == null) return 'unknown error'
  // Some libp2p promises reject with the stream's 'close' Event, not an Error.
  if (typeof Event !== 'undefined' && err instanceof Event) {
    return `${err.type} event${err.error != null ? `: ${errText(err.error)}` : ''}`
  }
  return `${err.name ?? 'Error'}: ${err.message ?? String(err)}`
}

function cidOf (keyHex) {
  // A kad provider key is a multihash; js kad-dht's provide/findProviders take a CID and
  // send cid.multihash.bytes on the wire, so wrap the multihash in a CIDv1 (raw codec).
  return CID.createV1(RAW_CODEC, Digest.decode(unhex(keyHex)))
}

async function routingTablePeers () {
  const kb = dht.routingTable.kb
  if (kb == null) return []
  const out = []
  for (const contact of kb.toIterable()) out.push(contact.peerId.toString())
  return out
}

async function inRoutingTable (peerId) {
  return (await dht.routingTable.find(peerIdFromString(peerId))) != null
}

async function waitInTable (peerIds, signal) {
  while (true) {
    const missing = []
    for (const id of peerIds) {
      if (!(await inRoutingTable(id))) missing.push(id)
    }
    if (missing.length === 0) return []
    if (signal.aborted) return missing
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
}

// Run a kad-dht query (an async iterable of query events) and summarise its events.
async function collect (events, signal) {
  const out = {
    responses: [], // PEER_RESPONSE: who answered what
    providers: {}, // provider peer ID -> {addrs, from: [peer IDs that named it]}
    final_peers: {}, // FINAL_PEER: peer ID -> addrs
    values: [], // VALUE events
    errors: [], // QUERY_ERROR: who failed and how
    timed_out: false
  }
  try {
    for await (const event of events) {
      if (event.name === 'PEER_RESPONSE') {
        out.responses.push({
          from: event.from.toString(),
          type: event.messageName,
          closer: (event.closer ?? []).map((p) => ({ id: p.id.toString(), addrs: addrsOf(p) })),
          providers: (event.providers ?? []).map((p) => ({ id: p.id.toString(), addrs: addrsOf(p) })),
          record: event.record == null
            ? null
            : { key_hex: hex(event.record.key), value_hex: hex(event.record.value) }
        })
        for (const p of event.providers ?? []) {
          const entry = (out.providers[p.id.toString()] ??= { addrs: addrsOf(p), from: [] })
          entry.from.push(event.from.toString())
        }
      } else if (event.name === 'PROVIDER') {
        for (const p of event.providers) {
          const entry = (out.providers[p.id.toString()] ??= { addrs: addrsOf(p), from: [] })
          if (!entry.from.includes(event.from.toString())) entry.from.push(event.from.toString())
        }
      } else if (event.name === 'FINAL_PEER') {
        out.final_peers[event.peer.id.toString()] = addrsOf(event.peer)
      } else if (event.name === 'VALUE') {
        out.values.push({ from: event.from.toString(), value_hex: hex(event.value) })
      } else if (event.name === 'QUERY_ERROR') {
        out.errors.push({ from: event.from?.toString() ?? null, error: errText(event.error) })
      }
    }
  } catch (err) {
    if (signal.aborted) {
      out.timed_out = true
    } else {
      out.query_error = errText(err)
    }
  }
  return out
}

const commands = {
  async info () {
    return {
      peer_id: node.peerId.toString(),
      addrs: node.getMultiaddrs().map((ma) => ma.toString()),
      routing_table: await routingTablePeers(),
      mode: dht.getMode(),
      pk_record: selfPk
    }
  },

  async dial (req, signal) {
    const ma = multiaddr(req.addr)
    const conn = await node.dial(ma, { signal })
    const peer = conn.remotePeer.toString()
    let missing = []
    if (req.wait_table !== false) missing = await waitInTable([peer], signal)
    return { peer_id: peer, in_routing_table: missing.length === 0 }
  },

  async routing_table () {
    return { peers: await routingTablePeers() }
  },

  async wait_table (req, signal) {
    const missing = await waitInTable(req.peer_ids, signal)
    return { missing }
  },

  async provide (req, signal) {
    const result = await collect(dht.provide(cidOf(req.key_hex), { signal }), signal)
    result.sent_to = result.responses.filter((r) => r.type === 'ADD_PROVIDER').map((r) => r.from)
    return result
  },

  async find_providers (req, signal) {
    return collect(dht.findProviders(cidOf(req.key_hex), { signal }), signal)
  },

  async local_providers (req) {
    const ids = await dht.providers.getProviders(cidOf(req.key_hex))
    return { providers: ids.map((id) => id.toString()) }
  },

  async find_peer (req, signal) {
    return collect(dht.findPeer(peerIdFromString(req.peer_id), { signal, useCache: false }), signal)
  },

  async get_closest_peers (req, signal) {
    return collect(dht.getClosestPeers(unhex(req.key_hex), { signal }), signal)
  },

  async ping (req, signal) {
    const rtt = await node.services.ping.ping(peerIdFromString(req.peer_id), { signal })
    return { rtt_ms: rtt }
  },

  async kad_request (req, signal) {
    const type = MessageType[req.type]
    if (type == null) throw new Error(`unknown kad message type ${req.type}`)
    const msg = { type }
    if (req.key_hex != null) msg.key = unhex(req.key_hex)
    return collect(dht.network.sendRequest(peerIdFromString(req.peer_id), msg, { signal }), signal)
  },

  async put (req, signal) {
    return collect(dht.put(unhex(req.key_hex), unhex(req.value_hex), { signal }), signal)
  },

  async get (req, signal) {
    return collect(dht.get(unhex(req.key_hex), { signal }), signal)
  },

  // Accept any value under /<namespace>/ (mode "accept"), or go back to js kad-dht's
  // defaults, which have validators and selectors for /pk/ only (mode "none"). The
  // handlers share dht.validators and dht.selectors, so this applies at once.
  async set_validator (req) {
    const ns = req.namespace
    if (req.mode === 'accept') {
      dht.validators[ns] = async () => {}
      dht.selectors[ns] = () => 0
    } else if (req.mode === 'none') {
      delete dht.validators[ns]
      delete dht.selectors[ns]
    } else {
      throw new Error(`unknown validator mode ${JSON.stringify(req.mode)}`)
    }
    return { validators: Object.keys(dht.validators) }
  }
}

let stopping = false
async function shutdown (code) {
  if (stopping) return
  stopping = true
  const timer = setTimeout(() => process.exit(code), 5_000)
  timer.unref()
  try {
    await node.stop()
  } catch (err) {
    log('stop failed:', errText(err))
  }
  process.exit(code)
}

setTimeout(() => {
  log(`--max-seconds ${MAX_SECONDS} reached: exiting`)
  void shutdown(3)
}, MAX_SECONDS * 1000).unref()
process.on('SIGTERM', () => { void shutdown(0) })
// Whoever reads our stdout went away (EPIPE): nobody is driving us any more.
process.stdout.on('error', () => { void shutdown(0) })
process.on('SIGINT', () => { void shutdown(0) })

send({
  event: 'ready',
  peer_id: node.peerId.toString(),
  addrs: node.getMultiaddrs().map((ma) => ma.toString()),
  protocol: PROTOCOL,
  pk_record: selfPk,
  versions: { node: process.version }
})

const lines = readline.createInterface({ input: process.stdin, terminal: false })
for await (const line of lines) {
  if (line.trim() === '') continue
  let req
  try {
    req = JSON.parse(line)
  } catch (err) {
    send({ id: null, ok: false, error: `bad JSON: ${errText(err)}` })
    continue
  }
  if (req.cmd === 'stop') {
    send({ id: req.id ?? null, ok: true })
    await shutdown(0)
    break
  }
  const handler = commands[req.cmd]
  if (handler == null) {
    send({ id: req.id ?? null, ok: false, error: `unknown command ${JSON.stringify(req.cmd)}` })
    continue
  }
  const timeoutMs = Number(req.timeout_ms ?? DEFAULT_TIMEOUT_MS)
  const signal = AbortSignal.timeout(timeoutMs)
  const started = Date.now()
  try {
    const result = await handler(req, signal)
    send({ id: req.id ?? null, ok: true, elapsed_ms: Date.now() - started, ...result })
  } catch (err) {
    send({ id: req.id ?? null, ok: false, elapsed_ms: Date.now() - started, error: errText(err) })
  }
}
// stdin closed: nobody is driving us any more.
await shutdown(0)
