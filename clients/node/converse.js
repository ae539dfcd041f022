#!/usr/bin/env node
// A tiny TTH client in Node.js: one Converse turn, with the message types built at
// run time from the repo's .proto files by @grpc/proto-loader (no generated code).
//
//   npm ci
//   node converse.js [HOST:PORT] [TEXT]        (default 127.0.0.1:50051, "Hello from Node!")
//
// Environment: TTH_API_KEY (sent as "authorization: Bearer KEY"), TTH_PROTOS (the
// folder holding tth/v1/*.proto; default ../../protos). Prints one JSON summary of
// the turn on stdout and exits 0 when the turn completed.
"use strict";

const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTOS = process.env.TTH_PROTOS || path.resolve(__dirname, "..", "..", "protos");

function loadService() {
  const definition = protoLoader.loadSync("tth/v1/conversation.proto", {
    includeDirs: [PROTOS],
    keepCase: true, // field names as in the .proto: turn_id, sample_rate_hz
    longs: Number, // seq and frame_index are uint64
    enums: String, // "EMOTION_LABEL_HAPPY"
    defaults: true,
    oneofs: true, // each response names its arm in `event`
  });
  return grpc.loadPackageDefinition(definition).tth.v1.ConversationService;
}

// Runs one turn: config, wait for `started`, send the text, read until the terminal
// event, half-close, and resolve with a summary once the call ends with OK.
function converse(target, text, apiKey) {
  const ConversationService = loadService();
  const client = new ConversationService(target, grpc.credentials.createInsecure());
  const metadata = new grpc.Metadata();
  if (apiKey) metadata.set("authorization", `Bearer ${apiKey}`);

  const summary = { events: {}, text: "", audio_ms: 0, frames: 0, session_id: "", outcome: "" };
  return new Promise((resolve, reject) => {
    const call = client.Converse(metadata);
    call.on("data", (response) => {
      const kind = response.event;
      summary.events[kind] = (summary.events[kind] || 0) + 1;
      switch (kind) {
        case "started":
          summary.session_id = response.started.session_id;
          call.write({ text: { text, control: { emotion: { label: "EMOTION_LABEL_HAPPY", intensity: 0.7 } } } });
          break;
        case "text_delta":
          summary.text += response.text_delta.text;
          break;
        case "media": // the audio and frames that were ready together (config.batch_media)
          for (const chunk of response.media.audio) summary.audio_ms += chunk.duration_ms;
          summary.frames += response.media.video.length;
          break;
        case "audio": // one chunk per response, on streams that do not batch
          summary.audio_ms += response.audio.duration_ms;
          break;
        case "video":
          summary.frames += 1;
          break;
        case "turn_complete":
          summary.outcome = "completed";
          summary.metrics = response.turn_complete.metrics;
          call.end(); // half-close: the server ends the call with OK
          break;
        case "turn_interrupted":
          summary.outcome = "interrupted";
          call.end();
          break;
        case "error":
          summary.error = response.error;
          if (response.turn_id) {
            summary.outcome = "failed";
            call.end();
          }
          break;
        default:
          break; // an event kind newer than this script
      }
    });
    call.on("error", (error) => {
      client.close();
      reject(error);
    });
    call.on("status", (status) => {
      client.close();
      if (status.code === grpc.status.OK) resolve(summary);
    });
    call.write({ config: { persona_id: "casual", batch_media: true } });
  });
}

async function main() {
  const [target = "127.0.0.1:50051", text = "Hello from Node!"] = process.argv.slice(2);
  try {
    const summary = await converse(target, text, process.env.TTH_API_KEY);
    process.stdout.write(`${JSON.stringify(summary)}\n`);
    process.exitCode = summary.outcome === "completed" ? 0 : 1;
  } catch (error) {
    process.stderr.write(`converse.js: ${error.code !== undefined ? grpc.status[error.code] : ""} ${error.details || error.message}\n`);
    process.exitCode = 1;
  }
}

if (require.main === module) main();

module.exports = { converse };
