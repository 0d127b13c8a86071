// The official Node SDKs against a live gateway: prints one JSON object of
// {"client": {"feature": "pass" | "fail: <message>"}} on stdout.
// Usage: GATEWAY_BASE=http://127.0.0.1:PORT GATEWAY_KEY=gw-... node check.mjs
import OpenAI from "openai";
import Anthropic from "@anthropic-ai/sdk";
import { readFileSync } from "node:fs";

const versionOf = (name) =>
  JSON.parse(readFileSync(new URL(`./node_modules/${name}/package.json`, import.meta.url))).version;
const base = process.env.GATEWAY_BASE;
const key = process.env.GATEWAY_KEY;
const results = {};

async function cell(client, feature, fn) {
  results[client] ??= {};
  try {
    await fn();
    results[client][feature] = "pass";
  } catch (error) {
    results[client][feature] = `fail: ${String(error?.message ?? error).slice(0, 300)}`;
  }
}

function assert(condition, message) {
  if (!condition) throw new Error(message);
}

const hello = [{ role: "user", content: "hello" }];
const openaiName = `openai (Node ${versionOf("openai")})`;
const anthropicName = `@anthropic-ai/sdk (Node ${versionOf("@anthropic-ai/sdk")})`;
const openai = new OpenAI({ baseURL: `${base}/v1`, apiKey: key, maxRetries: 0 });
const anthropic = new Anthropic({ baseURL: base, apiKey: key, maxRetries: 0 });

for (const model of ["c-mock", "c-openai", "c-claude"]) {
  await cell(openaiName, `chat + stream with usage (${model})`, async () => {
    const completion = await openai.chat.completions.create({ model, messages: hello });
    assert(completion.choices[0].message.content, "no content");
    const stream = await openai.chat.completions.create({
      model, messages: hello, stream: true, stream_options: { include_usage: true },
    });
    let usage = null;
    for await (const chunk of stream) usage = chunk.usage ?? usage;
    assert(usage && usage.total_tokens > 0, "no usage");
  });
  await cell(openaiName, `responses create + stream (${model})`, async () => {
    const response = await openai.responses.create({ model, input: "hi" });
    assert(response.output_text, "no output_text");
    const stream = openai.responses.stream({ model, input: "hi" });
    const final = await stream.finalResponse();
    assert(final.output_text === response.output_text, "stream differs");
  });
  await cell(anthropicName, `messages + stream (${model})`, async () => {
    const message = await anthropic.messages.create({ model, max_tokens: 64, messages: hello });
    assert(message.content.length, "no content");
    const final = await anthropic.messages.stream({ model, max_tokens: 64, messages: hello }).finalMessage();
    assert(final.usage.output_tokens > 0, "no usage");
  });
}

await cell(openaiName, "tools (mock)", async () => {
  const completion = await openai.chat.completions.create({
    model: "c-mock", messages: hello,
    tools: [{ type: "function", function: { name: "get_weather", parameters: { type: "object", properties: { city: { type: "string" } } } } }],
  });
  assert(completion.choices[0].message.tool_calls[0].function.name === "get_weather", "no tool call");
});
await cell(openaiName, "embeddings: default base64 decodes to the real dimension (mock)", async () => {
  // openai-node asks for base64 by default and decodes it: a 16-float vector must stay 16.
  const result = await openai.embeddings.create({ model: "c-mock", input: "a" });
  assert(result.data[0].embedding.length === 16, `got ${result.data[0].embedding.length}`);
  const floats = await openai.embeddings.create({ model: "c-mock", input: "a", encoding_format: "float", dimensions: 8 });
  assert(floats.data[0].embedding.length === 8, "dimensions ignored");
});
await cell(openaiName, "models list + retrieve", async () => {
  const ids = [];
  for await (const model of openai.models.list()) ids.push(model.id);
  assert(ids.includes("c-mock"), "c-mock missing");
  assert((await openai.models.retrieve("c-mock")).id === "c-mock", "retrieve");
});
await cell(openaiName, "errors 401/404", async () => {
  const bad = new OpenAI({ baseURL: `${base}/v1`, apiKey: "gw-bad", maxRetries: 0 });
  await bad.models.list().then(() => { throw new Error("no 401"); }, (e) => assert(e instanceof OpenAI.AuthenticationError, "not AuthenticationError"));
  await openai.chat.completions.create({ model: "nope", messages: hello }).then(
    () => { throw new Error("no 404"); }, (e) => assert(e instanceof OpenAI.NotFoundError, "not NotFoundError"));
});
await cell(anthropicName, "count_tokens + models", async () => {
  const counted = await anthropic.messages.countTokens({ model: "c-claude", messages: hello });
  assert(counted.input_tokens > 0, "no count");
  const ids = [];
  for await (const model of anthropic.models.list()) ids.push(model.id);
  assert(ids.includes("c-claude"), "c-claude missing");
});
await cell(anthropicName, "errors 401/404", async () => {
  const bad = new Anthropic({ baseURL: base, apiKey: "gw-bad", maxRetries: 0 });
  await bad.messages.create({ model: "c-mock", max_tokens: 8, messages: hello }).then(
    () => { throw new Error("no 401"); }, (e) => assert(e instanceof Anthropic.AuthenticationError, "not AuthenticationError"));
  await anthropic.messages.create({ model: "nope", max_tokens: 8, messages: hello }).then(
    () => { throw new Error("no 404"); }, (e) => assert(e instanceof Anthropic.NotFoundError, "not NotFoundError"));
});

process.stdout.write(JSON.stringify(results) + "\n");
