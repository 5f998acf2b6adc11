#!/usr/bin/env node
// Call an mqttrpc method with JSON from mqtt.js (npm "mqtt" 5.x).
//
//	node call.mjs 127.0.0.1 1883 dev-7 SetTarget '{"celsius": 22}'
//
// prints one JSON line
//
//	{"status":0,"message":"","target":"","payload":{"previousCelsius":20}}
//
// and exits 0 when the status is 0 (OK), 1 on any other status, 2 when no
// answer came (timeout, or the broker could not be reached). The wire
// protocol is docs/protocol.md; install mqtt.js with `npm ci` in this
// directory. Options: --service NAME (default
// example.thermostat.v1.Thermostat), --timeout SECONDS (default 5).
import { randomBytes } from 'node:crypto'
import { parseArgs } from 'node:util'
import mqtt from 'mqtt'

const UNAVAILABLE = 14 // the status of a call nobody is subscribed to

const { values: opts, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    service: { type: 'string', default: 'example.thermostat.v1.Thermostat' },
    timeout: { type: 'string', default: '5' },
  },
})
if (positionals.length < 4 || positionals.length > 5) {
  console.error('usage: node call.mjs [--service NAME] [--timeout SECONDS] HOST PORT TARGET METHOD [JSON]')
  process.exit(2)
}
const [host, port, target, method, body = '{}'] = positionals
const timeout = Number(opts.timeout)

const clientId = 'js-' + randomBytes(6).toString('hex')
const requestTopic = `mqttrpc/${opts.service}/${target}/${method}`
const responseTopic = `mqttrpc/responses/${clientId}`
const correlation = randomBytes(16)

const client = mqtt.connect(`mqtt://${host}:${port}`, {
  protocolVersion: 5,
  clientId,
  clean: true,
  reconnectPeriod: 0, // one attempt: report a broker that is down
  connectTimeout: timeout * 1000,
})

let finished = false
function done(code, result) {
  if (finished) return
  finished = true
  if (result) console.log(JSON.stringify(result))
  clearTimeout(timer)
  client.end(() => process.exit(code))
}
function giveUp(why) {
  if (!finished) console.error(`call.mjs: ${why}`)
  done(2)
}

const timer = setTimeout(() => giveUp(`no answer from ${requestTopic} within ${timeout}s`), timeout * 1000)

client.on('error', (err) => giveUp(`${host}:${port}: ${err.message}`))

client.on('message', (topic, payload, packet) => {
  const props = packet.properties ?? {}
  if (!correlation.equals(props.correlationData ?? Buffer.alloc(0))) return // another call's answer
  // mqtt.js gives user properties as an object; a key sent twice becomes an array.
  const user = props.userProperties ?? {}
  const first = (v) => (Array.isArray(v) ? v[0] : v)
  // An OK answer carries no mqttrpc-status; a malformed one reads as 2, Unknown.
  const rawStatus = first(user['mqttrpc-status'])
  const status = rawStatus === undefined ? 0 : /^[0-9]+$/.test(rawStatus) ? Number(rawStatus) : 2
  let result = null
  if (payload.length > 0) {
    try {
      result = JSON.parse(payload.toString())
    } catch {
      result = payload.toString()
    }
  }
  done(status === 0 ? 0 : 1, {
    status,
    message: first(user['mqttrpc-message']) ?? '',
    target: first(user['mqttrpc-target']) ?? '',
    payload: result,
  })
})

// A PUBACK with reason 0x10 "no matching subscribers" (Mosquitto sends it)
// means no server serves this target: fail at once, as Unavailable.
// mqtt.js accepts it as a success, so look at the packet itself.
client.on('packetreceive', (packet) => {
  if (packet.cmd === 'puback' && packet.reasonCode === 0x10) {
    done(1, { status: UNAVAILABLE, message: `no matching subscribers on ${requestTopic}`, target: '', payload: null })
  }
})

client.on('connect', async () => {
  try {
    // Subscribe before publishing, so that the answer cannot come first.
    await client.subscribeAsync(responseTopic, { qos: 1 })
    await client.publishAsync(requestTopic, body, {
      qos: 1,
      properties: {
        responseTopic,
        correlationData: correlation,
        contentType: 'application/json',
        payloadFormatIndicator: true,
        messageExpiryInterval: Math.max(1, Math.ceil(timeout)),
        userProperties: { 'mqttrpc-timeout': String(Math.round(timeout * 1000)) },
      },
    })
  } catch (err) {
    giveUp(`call ${requestTopic}: ${err.message}`)
  }
})
