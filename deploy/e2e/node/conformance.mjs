// Conformance client: runs every case against the gateway with the official
// openai npm package and prints one JSON object of observations. The Go test
// (deploy/e2e/conformance_test.go) decides what is right.
import OpenAI from "openai";

const { BASE_URL, API_KEY, LIMITED_KEY } = process.env;
const client = new OpenAI({ apiKey: API_KEY, baseURL: BASE_URL, maxRetries: 0, timeout: 30000 });
const user = (content) => ({ role: "user", content });
const out = {};

async function record(name, fn) {
  try {
    out[name] = { ok: true, ...(await fn()) };
  } catch (err) {
    out[name] = {
      ok: false,
      status: err.status ?? null,
      type: err.type ?? err.error?.type ?? null,
      code: err.code ?? null,
      param: err.param ?? null,
      message: String(err.message ?? err),
      request_id: err.headers?.get?.("x-request-id") ?? null,
    };
  }
}

await record("non_stream", async () => {
  const r = await client.chat.completions.create({
    model: "deepseek-v4-flash",
    messages: [{ role: "system", content: "You are a helpful assistant." }, user("Write a haiku about programming.")],
    temperature: 0.7,
  });
  return { content: r.choices[0].message.content, finish_reason: r.choices[0].finish_reason, usage: r.usage };
});

// The same list as streamCases in conformance_test.go: OpenAI's upstream shape
// and DeepSeek's (usage on the finish chunk), with and without include_usage.
const streamCases = [
  ["stream_no_usage", "", false],
  ["stream_usage", "", true],
  ["stream_no_usage_deepseek", " #sim usage_on_finish", false],
  ["stream_usage_deepseek", " #sim usage_on_finish", true],
];
for (const [name, directive, include] of streamCases) {
  await record(name, async () => {
    const params = { model: "deepseek-v4-flash", messages: [user("Explain recursion in 3 sentences." + directive)], stream: true };
    if (include) params.stream_options = { include_usage: true };
    const stream = await client.chat.completions.create(params);
    let content = "";
    const chunks = [];
    for await (const chunk of stream) {
      content += chunk.choices[0]?.delta?.content || "";
      chunks.push({
        choices: chunk.choices.length,
        finish: chunk.choices[0]?.finish_reason ?? "",
        usage_member: Object.hasOwn(chunk, "usage"),
        usage: (chunk.usage?.total_tokens ?? 0) > 0,
      });
    }
    return { content, chunks };
  });
}

await record("tools", async () => {
  const tools = [{ type: "function", function: { name: "get_weather", description: "Weather in a city",
    parameters: { type: "object", properties: { city: { type: "string" } } } } }];
  const messages = [user("What is the weather in Paris?")];
  const first = await client.chat.completions.create({ model: "deepseek-chat", messages, tools });
  const call = first.choices[0].message.tool_calls?.[0];
  messages.push(first.choices[0].message);
  messages.push({ role: "tool", tool_call_id: call.id, content: "{\"temp_c\": 21}" });
  const second = await client.chat.completions.create({ model: "deepseek-chat", messages, tools });
  return { finish_reason: first.choices[0].finish_reason, tool: call.function.name, arguments: call.function.arguments,
    final_finish_reason: second.choices[0].finish_reason, final_content: second.choices[0].message.content };
});

await record("json_output", async () => {
  const r = await client.chat.completions.create({
    model: "deepseek-v4-flash", messages: [user("Reply in JSON.")], response_format: { type: "json_object" } });
  return { parsed: JSON.parse(r.choices[0].message.content) };
});

await record("thinking", async () => {
  const r = await client.chat.completions.create({ model: "deepseek-reasoner", messages: [user("What is 6 x 7?")] });
  const m = r.choices[0].message;
  return { reasoning_content: m.reasoning_content ?? null, content: m.content, reasoning_tokens: r.usage?.completion_tokens_details?.reasoning_tokens ?? 0 };
});

await record("multi_turn_echo", async () => {
  const first = await client.chat.completions.create({ model: "deepseek-reasoner", messages: [user("Pick a number.")] });
  // Echo the whole assistant message back, reasoning_content included, as many clients do.
  const second = await client.chat.completions.create({ model: "deepseek-reasoner",
    messages: [user("Pick a number."), first.choices[0].message, user("Double it.")] });
  return { content: second.choices[0].message.content };
});

const errCases = {
  error_400: () => client.chat.completions.create({ model: "deepseek-v4-flash", messages: [user("x")], temperature: 5 }),
  error_401: () => new OpenAI({ apiKey: "sk-" + "x".repeat(48), baseURL: BASE_URL, maxRetries: 0 })
    .chat.completions.create({ model: "deepseek-v4-flash", messages: [user("x")] }),
  error_404: () => client.chat.completions.create({ model: "no-such-model", messages: [user("x")] }),
  error_429: async () => {
    const limited = new OpenAI({ apiKey: LIMITED_KEY, baseURL: BASE_URL, maxRetries: 0 });
    for (let i = 0; i < 5; i++) await limited.chat.completions.create({ model: "deepseek-v4-flash", messages: [user("x" + i)] });
  },
  error_502: () => client.chat.completions.create({ model: "deepseek-v4-flash", messages: [user("#sim status=500")] }),
  error_504: () => client.chat.completions.create({ model: "deepseek-v4-flash", messages: [user("#sim hang")] }),
};
for (const [name, fn] of Object.entries(errCases)) await record(name, fn);

process.stdout.write(JSON.stringify(out) + "\n");
