// Switchboard client: one WebSocket per client, every subscribed channel resumed from its
// last offset after any reconnect, so that the application sees each message once and in
// order, or is told (onRecovered(false)) that it must reload its state. Messages with a
// message_id (streams that grow by appends, edits, deletes) live in their subscription and
// change in place; a resume's state frames replace them whole (docs/streams.md). Channels
// the server subscribed the client to (token `subs`, `POST /v1/subscribe`) hold them the
// same way and tell through `on("message")` and `on("update")`.
//
// The wire protocol is docs/protocol.md in the server's repository.

/** A WebSocket constructor: the browser's, Node 20+'s, React Native's, or the `ws` package's. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string; wasClean?: boolean }) => void) | null;
  onerror: ((event: unknown) => void) | null;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface Options {
  /** A JWT sent in an `auth` frame after each connect (kept out of the URL). */
  token?: string;
  /**
   * Returns a fresh JWT: called before each connect when given, before the current token's
   * `exp` (refresh), and after a 4004 (token expired) close.
   */
  getToken?: () => Promise<string>;
  /** The WebSocket implementation; defaults to `globalThis.WebSocket`. */
  WebSocket?: WebSocketConstructor;
  /** Smallest and largest reconnect backoff, ms (full jitter between 0 and the cap). */
  minReconnectDelay?: number;
  maxReconnectDelay?: number;
  /** After a close the server started, the first try waits a random 0..this ms (RFC 6455 7.2.3). */
  serverCloseDelay?: number;
  /** How long a publish or subscribe waits for its reply, ms. */
  requestTimeout?: number;
  /** How long a connection attempt may take until the server's `welcome`, ms. */
  connectTimeout?: number;
  /** Refresh the token this long before its `exp`, ms. */
  refreshBefore?: number;
  /** A connection silent this long past one heartbeat (after an application ping) is dead, ms. */
  pongTimeout?: number;
  /**
   * How many messages with an id each server-side subscription keeps (`sb.serverMessages`,
   * default 1000): past it, the oldest that are not open are forgotten, as `maxMessages`.
   */
  maxServerMessages?: number;
  /**
   * Where the page's life is told: `online`/`offline` and `visibilitychange` events, and
   * whether the device is online and the page visible. Defaults to the browser's
   * (`window`, `navigator.onLine`, `document.visibilityState`); absent in Node. React Native
   * has no such events: call `reconnectNow()` from an `AppState` listener instead.
   */
  lifecycle?: Lifecycle | null;
}

/** The page's life, as a browser tells it (see `Options.lifecycle`). */
export interface Lifecycle {
  addEventListener(type: "online" | "offline" | "visibilitychange", listener: () => void): void;
  removeEventListener(type: "online" | "offline" | "visibilitychange", listener: () => void): void;
  /** False while the device has no network: retries wait for `online`. */
  isOnline(): boolean;
  /** Whether the page is shown. */
  isVisible(): boolean;
}

/** The browser's lifecycle, where there is one. */
function browserLifecycle(): Lifecycle | null {
  const g = globalThis as any;
  if (typeof g.addEventListener !== "function" || typeof g.document === "undefined") return null;
  return {
    addEventListener: (type, listener) =>
      (type === "visibilitychange" ? g.document : g).addEventListener(type, listener),
    removeEventListener: (type, listener) =>
      (type === "visibilitychange" ? g.document : g).removeEventListener(type, listener),
    isOnline: () => g.navigator?.onLine !== false,
    isVisible: () => g.document.visibilityState !== "hidden",
  };
}

export interface PublishOptions {
  /** The message's id (1-128 characters of `A-Z a-z 0-9 _ - . : @ / =`), unique in its channel. */
  messageId?: string;
  /** Open a stream (needs `messageId`): its text grows by `append` until `finish`. */
  stream?: boolean;
}

export type State = "disconnected" | "connecting" | "connected" | "reconnecting" | "closed";

export interface ServerError {
  code: string;
  message: string;
}

export interface Message<T = unknown> {
  channel: string;
  offset: string;
  data: T;
  /** The message's `message_id`, when it was published with one. */
  id?: string;
  /** Messages with an id (see `StreamMessage`): its own offset, when `offset` is a later operation's. */
  created?: string;
  /** Messages with an id: where it stands. */
  status?: MessageStatus;
  /** A stream's text (messages with an id published with `stream`). */
  text?: string;
  /** History entries: the offset of the message's last operation, when it changed since its publish. */
  updated?: string;
}

/** Where a message with an id stands (docs/streams.md). */
export type MessageStatus = "open" | "finished" | "abandoned" | "deleted";

/**
 * A message published with a `message_id`, as a subscription holds it (`sub.messages`): one
 * object per id, changed in place by every operation on it (appends, finish, update,
 * delete, abandon) and by the state frames a resume replays.
 */
export interface StreamMessage<T = unknown> {
  /** Its `message_id`. */
  readonly id: string;
  readonly channel: string;
  /** The offset of the last operation applied to it (its publish, an append, an edit...). */
  readonly offset: string;
  /** Its own offset: where its publish stands in the channel. */
  readonly created: string;
  readonly status: MessageStatus;
  /** A stream's text so far; `undefined` for a message published whole, and once deleted. */
  readonly text: string | undefined;
  /** Its data (a stream's metadata); `undefined` once deleted. */
  readonly data: T | undefined;
}

/** What a message held as it was before a state frame replaced it. */
export interface MessageSnapshot<T = unknown> {
  offset: string;
  created: string;
  status: MessageStatus;
  text: string | undefined;
  data: T | undefined;
}

/** What changed in a `StreamMessage`, as `onUpdate` tells it. */
export type MessageChange<T = unknown> =
  /** `text` was added at the end of the stream's text. */
  | { type: "append"; offset: string; text: string }
  /** The stream is finished; `data`, when given (`"data" in change`), replaced its data. */
  | { type: "finish"; offset: string; data?: T }
  /** An edit: what it gives replaced the message's `data` and/or `text`. */
  | { type: "update"; offset: string; data?: T; text?: string }
  /** The message is a tombstone now: no `data`, no `text`. */
  | { type: "delete"; offset: string }
  /** The server closed the stream unfinished (`idle`, `ingest`); its text so far stays. */
  | { type: "abandon"; offset: string; reason: string }
  /**
   * A state frame (a resume's replay) replaced the message whole: `previous` is what the
   * subscription held before. Render the message again from its fields.
   */
  | { type: "state"; offset: string; previous: MessageSnapshot<T> };

/** A subscriber of a channel whose namespace tracks members (docs/protocol.md "Presence"). */
export interface Member {
  node: string;
  conn_id: number;
  /** The token's `sub`; `""` for an anonymous connection. */
  user: string;
  /** The token's `info` claim, when it had one. */
  info?: unknown;
}

export interface SubscriptionHandlers<T = unknown> {
  /**
   * Each message of the channel, once, in order. A message with a `message_id` comes once,
   * when the subscription first holds it: `message` is then its `StreamMessage`, the object
   * later changes update in place (and `onUpdate` reports).
   */
  onMessage?: (data: T, message: Message<T>) => void;
  /**
   * A message the subscription holds (`sub.messages`) changed; `message` is already updated,
   * `change` says what changed.
   */
  onUpdate?: (message: StreamMessage<T>, change: MessageChange<T>) => void;
  /**
   * How many messages with an id `sub.messages` keeps (default 1000): past it, the oldest
   * that are not open are forgotten (later changes to a forgotten message are not reported).
   */
  maxMessages?: number;
  /** A member joined (namespaces with `join_leave`); once per member, also from a coalesced frame. */
  onJoin?: (member: Member) => void;
  /** A member left (namespaces with `join_leave`). */
  onLeave?: (member: Member) => void;
  /**
   * After a resume: `true` when nothing was missed; `false` when the server could not
   * replay what was missed (history too short, or the channel restarted): reload state.
   * Also `false`, without a reconnect, when the server lost the channel's history while
   * subscribed (a `reset` frame: Redis restarted empty).
   */
  onRecovered?: (recovered: boolean) => void;
  /** The server refused the subscription (e.g. `forbidden`); it is dropped. */
  onError?: (error: ServerError) => void;
}

export interface Subscription<T = unknown> {
  readonly channel: string;
  /** The offset of the last frame applied (or the position at subscribe): where a resume starts. */
  readonly offset: string | undefined;
  /** The messages with a `message_id` this subscription holds, by id, in the order they came. */
  readonly messages: ReadonlyMap<string, StreamMessage<T>>;
  unsubscribe(): void;
}

type EventName =
  | "connecting"
  | "connected"
  | "disconnected"
  | "reconnecting"
  | "error"
  | "closed"
  | "subscribed"
  | "unsubscribed"
  | "message"
  | "update";
type Listener = (detail: any) => void;

/** Close codes after which reconnecting cannot help (docs/protocol.md "Close codes"). */
const TERMINAL_CODES = new Set([4003, 4005]);
/** Frames of one channel, kept in order behind a `gap` being filled. */
const CHANNEL_FRAMES = new Set(["message", "append", "finish", "update", "delete", "abandon", "reset", "gap"]);
/** The token expired: reconnect with a fresh one. */
const TOKEN_EXPIRED = 4004;
/** Close code this client uses for a connection it gave up on (no traffic). */
const DEAD_CONNECTION = 4900;
/** Offsets are `<epoch hex>-<seq>`. */
function parseOffset(offset: string): { epoch: string; seq: number } | undefined {
  const dash = offset.lastIndexOf("-");
  if (dash <= 0) return undefined;
  const seq = Number(offset.slice(dash + 1));
  return Number.isSafeInteger(seq) ? { epoch: offset.slice(0, dash), seq } : undefined;
}

/** A `StreamMessage`'s fields from a `message` frame: as published, or a state frame. */
function messageFields(frame: any): Omit<Mutable<StreamMessage>, "id" | "channel"> {
  if (typeof frame.status === "string") {
    return {
      offset: frame.offset,
      created: frame.created ?? frame.offset,
      status: frame.status,
      text: typeof frame.text === "string" ? frame.text : undefined,
      data: frame.data,
    };
  }
  const stream = frame.stream === "open";
  return {
    offset: frame.offset,
    created: frame.offset,
    status: stream ? "open" : "finished",
    text: stream ? "" : undefined,
    data: frame.data,
  };
}

/** Whether `offset` comes after `last` in the same epoch; true for another epoch. */
export function isAfter(offset: string, last: string | undefined): boolean {
  if (last === undefined) return true;
  const a = parseOffset(offset);
  const b = parseOffset(last);
  if (!a || !b || a.epoch !== b.epoch) return true;
  return a.seq > b.seq;
}

/** The fields of a `StreamMessage` as this client writes them. */
type Mutable<T> = { -readonly [K in keyof T]: T[K] };

/**
 * What follows one channel's frames: an application's subscription (`Sub`) or one the server
 * made (`ServerSub`). Both keep the messages with an id and apply every operation to them.
 */
interface Feed {
  readonly channel: string;
  /** The offset of the last frame applied (or the position at subscribe). */
  offset: string | undefined;
  readonly messages: Map<string, Mutable<StreamMessage<any>>>;
  readonly handlers: SubscriptionHandlers<any>;
}

class Sub implements Subscription, Feed {
  offset: string | undefined;
  /** Sent and not yet answered, or answered on the current connection. */
  active = false;
  readonly messages = new Map<string, Mutable<StreamMessage<any>>>();
  constructor(
    readonly channel: string,
    readonly handlers: SubscriptionHandlers<any>,
    private readonly client: Switchboard,
  ) {}
  unsubscribe(): void {
    this.client.unsubscribe(this);
  }
}

/**
 * A channel the server subscribed this connection to (token `subs`, `POST /v1/subscribe`):
 * its handlers emit `message` and `update`. Kept across reconnects (inactive until the server
 * subscribes again), so the objects in `messages` stay the application's.
 */
class ServerSub implements Feed {
  offset: string | undefined;
  /** Subscribed on the current connection. */
  active = true;
  readonly messages = new Map<string, Mutable<StreamMessage<any>>>();
  constructor(
    readonly channel: string,
    readonly handlers: SubscriptionHandlers<any>,
  ) {}
}

interface Pending {
  /** Called with the reply as it arrives, before any later frame is handled. */
  onReply: ((reply: any) => void) | undefined;
  resolve: (value: any) => void;
  reject: (error: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

/** An error reply, or a request that could not complete. */
export class SwitchboardError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "SwitchboardError";
  }
}

export class Switchboard {
  private ws: WebSocketLike | undefined;
  private stateValue: State = "disconnected";
  private readonly subs = new Map<string, Sub>();
  /** Channels the server subscribed this client to (token `subs`, `POST /v1/subscribe`). */
  private readonly serverSubs = new Map<string, ServerSub>();
  private readonly pending = new Map<number, Pending>();
  /** Channels whose `gap` is being fetched from history: their frames that came since, held. */
  private readonly filling = new Map<string, any[]>();
  private readonly listeners = new Map<EventName, Set<Listener>>();
  private nextId = 1;
  private attempt = 0;
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  /** Between a closed attempt and the next (on a timer, or offline until `online`). */
  private waiting = false;
  private connectTimer: ReturnType<typeof setTimeout> | undefined;
  private refreshTimer: ReturnType<typeof setTimeout> | undefined;
  private heartbeatTimer: ReturnType<typeof setInterval> | undefined;
  private lastHeard = 0;
  private heartbeatMs = 25_000;
  /** The server's advice from a `reconnect` frame, for the next close. */
  private advisedDelay: number | undefined;
  private token: string | undefined;
  private readonly opts: Required<Omit<Options, "token" | "getToken" | "WebSocket" | "lifecycle">>;
  private readonly lifecycle: Lifecycle | null;
  private readonly onLifecycle = {
    online: () => this.wake(Math.random() * 1000),
    offline: () => {},
    visibilitychange: () => {
      if (this.lifecycle?.isVisible()) this.wake(0);
    },
  };
  private readonly WS: WebSocketConstructor;
  /** The node and connection id from the last `welcome`. */
  node: string | undefined;
  connId: number | undefined;
  user: string | undefined;

  constructor(
    readonly url: string,
    private readonly options: Options = {},
  ) {
    const WS = options.WebSocket ?? (globalThis as any).WebSocket;
    if (!WS) throw new Error("no WebSocket: pass options.WebSocket (Node < 22: --experimental-websocket or the ws package)");
    this.WS = WS;
    this.token = options.token;
    this.opts = {
      minReconnectDelay: options.minReconnectDelay ?? 500,
      maxReconnectDelay: options.maxReconnectDelay ?? 20_000,
      serverCloseDelay: options.serverCloseDelay ?? 5_000,
      requestTimeout: options.requestTimeout ?? 10_000,
      connectTimeout: options.connectTimeout ?? 10_000,
      refreshBefore: options.refreshBefore ?? 30_000,
      pongTimeout: options.pongTimeout ?? 10_000,
      maxServerMessages: options.maxServerMessages ?? 1000,
    };
    this.lifecycle = options.lifecycle === undefined ? browserLifecycle() : options.lifecycle;
    for (const [type, listener] of Object.entries(this.onLifecycle)) {
      this.lifecycle?.addEventListener(type as keyof typeof this.onLifecycle, listener);
    }
  }

  /**
   * Reconnects at once if the client is waiting to retry (the page came back, the network
   * returned, a React Native app became active). Does nothing while connected or closed.
   */
  reconnectNow(): void {
    this.wake(0);
  }

  /** Ends a retry's wait after `delay` ms, with the backoff started over. */
  private wake(delay: number): void {
    if (!this.waiting || this.stateValue !== "reconnecting") return;
    if (this.lifecycle && !this.lifecycle.isOnline()) return;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.attempt = 0;
    this.reconnectTimer = setTimeout(() => this.open(), delay);
  }

  get state(): State {
    return this.stateValue;
  }

  on(event: EventName, listener: Listener): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(listener);
    return () => set!.delete(listener);
  }

  /** Opens the connection (subscribing works before too: it takes effect once connected). */
  connect(): void {
    if (this.stateValue === "connecting" || this.stateValue === "connected") return;
    this.open();
  }

  /** Closes for good: no reconnect; pending requests fail. */
  close(): void {
    this.setState("closed");
    this.clearTimers();
    for (const [type, listener] of Object.entries(this.onLifecycle)) {
      this.lifecycle?.removeEventListener(type as keyof typeof this.onLifecycle, listener);
    }
    const ws = this.ws;
    this.ws = undefined;
    ws?.close(1000, "client closed");
    this.failPending("closed", "the client was closed");
  }

  subscribe<T = unknown>(channel: string, handlers: SubscriptionHandlers<T> = {}): Subscription<T> {
    if (this.subs.has(channel)) throw new Error(`already subscribed to ${channel}`);
    const sub = new Sub(channel, handlers, this);
    this.subs.set(channel, sub);
    if (this.stateValue === "connected") this.sendSubscribe(sub);
    else if (this.stateValue === "disconnected") this.connect();
    return sub;
  }

  /**
   * The messages with a `message_id` held for a channel the server subscribed this client to
   * (token `subs`, a backend's `POST /v1/subscribe`), by id, in the order they came; changed
   * in place as `sub.messages` is (`on("update")` tells). `undefined` for a channel the server
   * did not subscribe this client to, or unsubscribed it from. Kept across reconnects: the
   * server's subscription on the next connection replaces its open streams whole.
   */
  serverMessages<T = unknown>(channel: string): ReadonlyMap<string, StreamMessage<T>> | undefined {
    return this.serverSubs.get(channel)?.messages;
  }

  /** @internal */
  unsubscribe(sub: Subscription): void {
    if (this.subs.get(sub.channel) !== sub) return;
    this.subs.delete(sub.channel);
    if (this.stateValue === "connected" && (sub as Sub).active) {
      this.request({ type: "unsubscribe", channel: sub.channel }).catch(() => {});
    }
  }

  /**
   * Publishes `data` to `channel`; resolves to its offset once the server ordered it. With
   * `messageId` the message has an id (and a publish the channel already knows resolves to
   * the first one's offset: retrying is safe); with `stream` too, it opens a stream whose
   * text grows by `append` and `data` is its metadata (`null` when not given).
   */
  async publish(channel: string, data: unknown, options: PublishOptions = {}): Promise<string> {
    const frame: Record<string, unknown> = { type: "publish", channel, data };
    if (options.messageId !== undefined) frame.message_id = options.messageId;
    if (options.stream) {
      frame.stream = true;
      if (data === undefined) frame.data = null;
    }
    return this.operate(frame);
  }

  /**
   * Asks the application backend (`hooks.rpc_url`, docs/backend.md) over this connection:
   * resolves to the `data` of its answer; rejects with a `SwitchboardError` whose code is
   * `forbidden` (the backend refused, with its message), `unavailable` (busy, failing, too
   * slow), `limit_exceeded` (too many in flight), `not_found` (no rpc hook) or `disconnected`.
   * Not retried: the backend may have acted on it.
   */
  async rpc<T = unknown>(method: string, data?: unknown): Promise<T> {
    const frame: Record<string, unknown> = { type: "rpc", method };
    if (data !== undefined) frame.data = data;
    const reply = await this.request(frame);
    return reply.data as T;
  }

  /** Adds `text` at the end of an open stream; resolves to the append's offset. Not idempotent: see the README. */
  append(channel: string, messageId: string, text: string): Promise<string> {
    return this.operate({ type: "append", channel, message_id: messageId, text });
  }

  /** Finishes an open stream (`data`, when given, replaces its metadata); resolves to the finish's offset. */
  finish(channel: string, messageId: string, data?: unknown): Promise<string> {
    const frame: Record<string, unknown> = { type: "finish", channel, message_id: messageId };
    if (data !== undefined) frame.data = data;
    return this.operate(frame);
  }

  /** Replaces a message's `data` and/or (streams) its `text`; resolves to the edit's offset. */
  update(channel: string, messageId: string, change: { data?: unknown; text?: string }): Promise<string> {
    const frame: Record<string, unknown> = { type: "update", channel, message_id: messageId };
    if (change.data !== undefined) frame.data = change.data;
    if (change.text !== undefined) frame.text = change.text;
    return this.operate(frame);
  }

  /** Turns a message into a tombstone; resolves to the delete's offset (the first one's, for a deleted message). */
  delete(channel: string, messageId: string): Promise<string> {
    return this.operate({ type: "delete", channel, message_id: messageId });
  }

  /** Sends a frame that publishes or changes a message, once connected: the `published` reply's offset. */
  private async operate(frame: Record<string, unknown>): Promise<string> {
    await this.whenConnected();
    const reply = await this.request(frame);
    return reply.offset;
  }

  /**
   * Messages kept in the channel's history: the newest `limit` (default 50, at most 100), or
   * those after `since`. `truncated`: the reply's size bound left some out (the oldest
   * without `since`, the newest with it: call again with the last offset to page on).
   * Needs the channel's namespace to allow history.
   */
  async history<T = unknown>(
    channel: string,
    opts: { since?: string; limit?: number } = {},
  ): Promise<{ offset: string; recovered?: boolean; messages: Message<T>[]; truncated: boolean }> {
    await this.whenConnected();
    const frame: Record<string, unknown> = { type: "history", channel };
    if (opts.since !== undefined) frame.since = opts.since;
    if (opts.limit !== undefined) frame.limit = opts.limit;
    const reply = await this.request(frame);
    return {
      offset: reply.offset,
      ...(reply.recovered === undefined ? {} : { recovered: reply.recovered }),
      messages: reply.messages.map((entry: any) => {
        const message: Message<T> = { channel, offset: entry.offset, data: entry.data };
        if (entry.message_id !== undefined) {
          message.id = entry.message_id;
          message.status = entry.status;
          if (entry.text !== undefined) message.text = entry.text;
          if (entry.updated !== undefined) message.updated = entry.updated;
        }
        return message;
      }),
      truncated: reply.truncated === true,
    };
  }

  /**
   * The channel's members (needs the namespace's `presence` rule). `truncated`: the server
   * listed at most `presence.max_listed`; the control API pages through all.
   */
  async presence(channel: string): Promise<{ members: Member[]; truncated: boolean }> {
    await this.whenConnected();
    const reply = await this.request({ type: "presence", channel });
    return { members: reply.members, truncated: reply.truncated === true };
  }

  /** How many connections and distinct users the channel has (the `presence` rule). */
  async presenceStats(channel: string): Promise<{ connections: number; users: number }> {
    await this.whenConnected();
    const reply = await this.request({ type: "presence_stats", channel });
    return { connections: reply.connections, users: reply.users };
  }

  /** An application-level round trip, in ms. */
  async ping(): Promise<number> {
    await this.whenConnected();
    const start = Date.now();
    await this.request({ type: "ping" });
    return Date.now() - start;
  }

  // --- connection ---

  private open(): void {
    this.waiting = false;
    this.clearTimers();
    this.setState(this.attempt === 0 && this.stateValue !== "reconnecting" ? "connecting" : "reconnecting");
    this.emit("connecting", { attempt: this.attempt });
    const start = async () => {
      if (this.options.getToken) {
        try {
          this.token = await this.options.getToken();
        } catch (error) {
          this.emit("error", { code: "token", message: String(error) });
          return this.scheduleReconnect(undefined);
        }
      }
      if (this.stateValue === "closed") return;
      let ws: WebSocketLike;
      try {
        ws = new this.WS(this.url);
      } catch (error) {
        this.emit("error", { code: "connect", message: String(error) });
        return this.scheduleReconnect(undefined);
      }
      this.ws = ws;
      this.advisedDelay = undefined;
      ws.onmessage = (event) => {
        if (this.ws === ws) this.onFrame(String(event.data));
      };
      ws.onclose = (event) => {
        if (this.ws === ws) this.onClose(event.code, event.reason, event.wasClean ?? true);
      };
      // A connection that fails before it opens may fire only `error` (Node 20's WebSocket
      // does for a refused connection), and one may hang: both count as a closed attempt.
      const failed = (reason: string) => {
        if (this.ws !== ws) return;
        // Detached first: closing a connecting socket may fire `error` again, at once.
        ws.onmessage = ws.onclose = ws.onerror = null;
        try {
          ws.close();
        } catch {
          // Closing a socket that never opened may throw; it is dropped either way.
        }
        this.onClose(1006, reason, false);
      };
      ws.onerror = () => {
        // After the open, a close event follows an error.
        if (ws.readyState !== 1) failed("connection failed");
      };
      this.connectTimer = setTimeout(() => failed("connect timeout"), this.opts.connectTimeout);
    };
    void start();
  }

  private onFrame(text: string): void {
    this.lastHeard = Date.now();
    let frame: any;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    this.dispatch(frame);
  }

  private dispatch(frame: any): void {
    // A channel whose gap is being filled takes its later frames after the gap's messages.
    const held = typeof frame.channel === "string" ? this.filling.get(frame.channel) : undefined;
    if (held && CHANNEL_FRAMES.has(frame.type)) {
      held.push(frame);
      return;
    }
    switch (frame.type) {
      case "welcome":
        if (this.connectTimer) clearTimeout(this.connectTimer);
        this.node = frame.node;
        this.connId = frame.conn_id;
        this.user = frame.user;
        this.heartbeatMs = frame.heartbeat_ms ?? this.heartbeatMs;
        this.startHeartbeat();
        if (this.token !== undefined && frame.user === undefined) {
          this.request({ type: "auth", token: this.token })
            .then((reply) => this.onAuthenticated(reply))
            .catch((error) => this.emit("error", error));
        } else {
          this.onReady();
        }
        return;
      case "message":
        return this.onMessage(frame);
      case "append":
      case "finish":
      case "update":
      case "delete":
      case "abandon":
        return this.onChange(frame);
      case "reset":
        return this.onReset(frame);
      case "gap":
        return this.onGap(frame);
      case "subscribed":
      case "unsubscribed":
        // Without an id: the server subscribed (or unsubscribed) this connection itself.
        if (frame.id === undefined) return this.onServerSubscription(frame);
        return this.settle(frame.id, frame, undefined);
      case "join":
      case "leave":
        return this.onMembers(frame);
      case "reconnect":
        // The node is draining: it closes us next (1012); come back after `after_ms`.
        this.advisedDelay = Math.max(0, Number(frame.after_ms) || 0);
        return;
      case "error":
        if (frame.id !== undefined && this.pending.has(frame.id)) {
          return this.settle(frame.id, undefined, new SwitchboardError(frame.code, frame.message));
        }
        this.emit("error", { code: frame.code, message: frame.message });
        return;
      default:
        if (frame.id !== undefined) this.settle(frame.id, frame, undefined);
    }
  }

  private onAuthenticated(reply: any): void {
    this.user = reply.user;
    this.scheduleRefresh(reply.exp);
    this.onReady();
  }

  /** Connected and (when a token is used) authenticated: resubscribe everything. */
  private onReady(): void {
    this.attempt = 0;
    this.setState("connected");
    this.emit("connected", { node: this.node, connId: this.connId, user: this.user });
    for (const sub of this.subs.values()) this.sendSubscribe(sub);
  }

  private sendSubscribe(sub: Sub): void {
    sub.active = true;
    const resume = sub.offset;
    const frame: any = { type: "subscribe", channel: sub.channel };
    if (resume !== undefined) frame.since = resume;
    // The reply is applied as it arrives: the frames right behind it (a replay, the open
    // streams' state) must find the subscription's position set, also where a WebSocket
    // hands several frames over in one task.
    const onReply = (reply: any) => {
      if (this.subs.get(sub.channel) !== sub) return;
      if (resume === undefined) {
        sub.offset ??= reply.offset;
      } else {
        const recovered = reply.recovered === true;
        // Not recovered: what was missed is gone; follow from the new position.
        if (!recovered) sub.offset = reply.offset;
        sub.handlers.onRecovered?.(recovered);
      }
    };
    this.request(frame, onReply).then(
      () => {},
      (error: SwitchboardError) => {
        if (error.code === "disconnected" || error.code === "timeout") return; // retried on reconnect
        if (error.code === "unavailable") {
          // Clustered and Redis unreachable: try again shortly.
          setTimeout(() => {
            if (this.subs.get(sub.channel) === sub && this.stateValue === "connected") this.sendSubscribe(sub);
          }, this.backoff());
          return;
        }
        this.subs.delete(sub.channel);
        sub.handlers.onError?.({ code: error.code, message: error.message });
      },
    );
  }

  private onServerSubscription(frame: any): void {
    if (this.subs.has(frame.channel)) return; // the application's own subscription
    if (frame.type === "subscribed") {
      // A subscription without `since`: from the current position, the channel's open
      // streams whole right behind it (state frames replacing what an earlier connection held).
      let serverSub = this.serverSubs.get(frame.channel);
      if (!serverSub) {
        serverSub = new ServerSub(frame.channel, this.serverHandlers(frame.channel));
        this.serverSubs.set(frame.channel, serverSub);
      }
      serverSub.active = true;
      serverSub.offset = frame.offset;
      this.emit("subscribed", { channel: frame.channel, offset: frame.offset });
    } else {
      this.serverSubs.delete(frame.channel);
      this.emit("unsubscribed", { channel: frame.channel });
    }
  }

  /** A server-side subscription's handlers: its messages and changes become events. */
  private serverHandlers(channel: string): SubscriptionHandlers<any> {
    return {
      maxMessages: this.opts.maxServerMessages,
      onMessage: (data, message) => {
        const detail: Record<string, unknown> = { channel, offset: message.offset, data, message };
        if (message.id !== undefined) detail.id = message.id;
        this.emit("message", detail);
      },
      onUpdate: (message, change) => this.emit("update", { channel, message, change }),
    };
  }

  /** What follows `channel` on this connection: the application's subscription, or the server's. */
  private feed(channel: string): Feed | undefined {
    const sub = this.subs.get(channel);
    if (sub) return sub;
    const serverSub = this.serverSubs.get(channel);
    return serverSub?.active ? serverSub : undefined;
  }

  private onMessage(frame: any): void {
    const feed = this.feed(frame.channel);
    if (!feed) return;
    if (typeof frame.message_id === "string") return this.onMessageWithId(feed, frame);
    // A replay can overlap what arrived live before a reconnect: each offset once.
    if (!isAfter(frame.offset, feed.offset)) return;
    feed.offset = frame.offset;
    feed.handlers.onMessage?.(frame.data, { channel: frame.channel, offset: frame.offset, data: frame.data });
  }

  /**
   * A `message` frame with a `message_id`: the message as published, or (with `created` and
   * `status`) a state frame, the message whole as it stands. A message the subscription does
   * not hold is added, whatever its offset: after a subscribe without `since`, the open
   * streams' frames come from before the subscription's position. One it holds is replaced
   * by a state frame newer than what it holds.
   */
  private onMessageWithId(sub: Feed, frame: any): void {
    const state = typeof frame.status === "string";
    const held = sub.messages.get(frame.message_id);
    if (isAfter(frame.offset, sub.offset)) sub.offset = frame.offset;
    if (held) {
      if (!state || !isAfter(frame.offset, held.offset)) return;
      const previous: MessageSnapshot = {
        offset: held.offset,
        created: held.created,
        status: held.status,
        text: held.text,
        data: held.data,
      };
      Object.assign(held, messageFields(frame));
      sub.handlers.onUpdate?.(held, { type: "state", offset: frame.offset, previous });
      return;
    }
    const message: Mutable<StreamMessage> = { id: frame.message_id, channel: frame.channel, ...messageFields(frame) };
    sub.messages.set(message.id, message);
    this.forgetOld(sub);
    // Handlers run after the change is applied whole: one that throws leaves no half state.
    sub.handlers.onMessage?.(message.data, message as Message);
  }

  /** `append`, `finish`, `update`, `delete`, `abandon`: applied in place to the message held. */
  private onChange(frame: any): void {
    const sub = this.feed(frame.channel);
    if (!sub) return;
    if (!isAfter(frame.offset, sub.offset)) return;
    sub.offset = frame.offset;
    const message = sub.messages.get(frame.message_id);
    // A message published before this subscription's first position (or forgotten): the
    // subscription never held it, so there is nothing to change.
    if (!message || !isAfter(frame.offset, message.offset)) return;
    message.offset = frame.offset;
    let change: MessageChange;
    switch (frame.type) {
      case "append":
        message.text = (message.text ?? "") + frame.text;
        change = { type: "append", offset: frame.offset, text: frame.text };
        break;
      case "finish":
        message.status = "finished";
        change = { type: "finish", offset: frame.offset };
        if ("data" in frame) message.data = change.data = frame.data;
        break;
      case "update":
        change = { type: "update", offset: frame.offset };
        if ("data" in frame) message.data = change.data = frame.data;
        if (typeof frame.text === "string") message.text = change.text = frame.text;
        break;
      case "delete":
        message.status = "deleted";
        message.data = message.text = undefined;
        change = { type: "delete", offset: frame.offset };
        break;
      default:
        message.status = "abandoned";
        change = { type: "abandon", offset: frame.offset, reason: String(frame.reason) };
    }
    sub.handlers.onUpdate?.(message, change);
  }

  /** Keeps `sub.messages` within `maxMessages`: the oldest messages that are not open go first. */
  private forgetOld(sub: Feed): void {
    const max = sub.handlers.maxMessages ?? 1000;
    let excess = sub.messages.size - max;
    if (excess <= 0) return;
    for (const [id, message] of sub.messages) {
      if (excess <= 0) break;
      if (message.status === "open") continue;
      sub.messages.delete(id);
      excess -= 1;
    }
  }

  /**
   * The server lost the channel's history (Redis restarted empty): the channel goes on in a
   * new epoch from `offset`, and what was missed cannot be replayed. Told as a failed resume.
   */
  private onReset(frame: any): void {
    const sub = this.subs.get(frame.channel);
    if (!sub) {
      const serverSub = this.serverSubs.get(frame.channel);
      if (serverSub?.active) serverSub.offset = frame.offset;
      return;
    }
    sub.offset = frame.offset;
    sub.handlers.onRecovered?.(false);
  }

  /**
   * The server dropped messages of a `drop_oldest` channel this client read too slowly to
   * get (`from` to `to`): they are fetched from history and delivered in order, before the
   * channel's frames that came after the gap. What history no longer holds is told as a
   * failed resume (`onRecovered(false)`), the offset moving past the gap.
   */
  private onGap(frame: any): void {
    const feed = this.feed(frame.channel);
    const from = parseOffset(frame.from);
    const to = parseOffset(frame.to);
    if (!feed || !from || !to || from.epoch !== to.epoch) return;
    const channel: string = frame.channel;
    this.filling.set(channel, []);
    const fill = async (): Promise<boolean> => {
      let since = `${from.epoch}-${from.seq - 1}`;
      for (;;) {
        const left = to.seq - (parseOffset(since)?.seq ?? to.seq);
        if (left <= 0) return true;
        const page = await this.history(channel, { since, limit: Math.min(left, 100) });
        const got = page.messages.filter((message) => !isAfter(message.offset, frame.to));
        if (got.length === 0) return false;
        for (const message of got) {
          if (parseOffset(message.offset)?.seq !== (parseOffset(since)?.seq ?? 0) + 1) return false;
          const replayed: any = { type: "message", channel, offset: message.offset, data: message.data };
          if (message.id !== undefined) {
            Object.assign(replayed, { message_id: message.id, status: message.status, created: message.offset });
            if (message.text !== undefined) replayed.text = message.text;
          }
          this.onMessage(replayed);
          since = message.offset;
        }
      }
    };
    fill()
      .catch(() => false)
      .then((complete) => {
        if (!complete) {
          if (isAfter(frame.to, feed.offset)) feed.offset = frame.to;
          feed.handlers.onRecovered?.(false);
        }
        const later = this.filling.get(channel) ?? [];
        this.filling.delete(channel);
        for (const held of later) this.dispatch(held);
      });
  }

  /** `join`/`leave`: one member's fields, or `members` when the server coalesced a burst. */
  private onMembers(frame: any): void {
    const sub = this.subs.get(frame.channel);
    if (!sub) return;
    const handler = frame.type === "join" ? sub.handlers.onJoin : sub.handlers.onLeave;
    if (!handler) return;
    const members: any[] = Array.isArray(frame.members) ? frame.members : [frame];
    for (const { node, conn_id, user, info } of members) {
      handler(info === undefined ? { node, conn_id, user } : { node, conn_id, user, info });
    }
  }

  private onClose(code: number, reason: string, wasClean: boolean): void {
    this.ws = undefined;
    // A resume on the next connection covers what a gap being filled would have.
    this.filling.clear();
    this.clearTimers();
    for (const sub of this.subs.values()) sub.active = false;
    // The server makes the token's `subs` again on the next connection; until then (and for
    // good where it does not), what they hold stays readable, unchanged.
    for (const serverSub of this.serverSubs.values()) serverSub.active = false;
    this.failPending("disconnected", `connection closed (${code})`);
    if (this.stateValue === "closed") return;
    this.emit("disconnected", { code, reason });
    if (TERMINAL_CODES.has(code)) {
      this.setState("closed");
      this.emit("closed", { code, reason });
      const error =
        code === 4005
          ? { code: "too_many_connections", message: reason || "the user holds too many connections" }
          : { code: "unauthorized", message: reason || "the server refused this client's token" };
      this.emit("error", error);
      return;
    }
    if (code === TOKEN_EXPIRED && !this.options.getToken) {
      this.setState("closed");
      this.emit("closed", { code, reason });
      this.emit("error", { code: "token_expired", message: "the token expired and there is no getToken" });
      return;
    }
    // A close the server started cleanly (a drain, a restart): its advice, or a random
    // 0-5 s before the first try, so that a node's clients do not all come back at once.
    const serverClosed = wasClean && code !== 1006 && code !== DEAD_CONNECTION;
    let delay: number | undefined = this.advisedDelay;
    if (delay === undefined && serverClosed && this.attempt === 0) {
      delay = Math.random() * this.opts.serverCloseDelay;
    }
    this.scheduleReconnect(delay);
  }

  private scheduleReconnect(delay: number | undefined): void {
    if (this.stateValue === "closed") return;
    const wait = delay ?? this.backoff();
    this.attempt += 1;
    this.setState("reconnecting");
    this.emit("reconnecting", { attempt: this.attempt, delay: wait });
    this.waiting = true;
    // Offline, a try would only fail: the `online` event starts the next one.
    if (this.lifecycle && !this.lifecycle.isOnline()) return;
    this.reconnectTimer = setTimeout(() => this.open(), wait);
  }

  /** Full jitter: random between 0 and min(max, min * 2^attempt). */
  private backoff(): number {
    const cap = Math.min(this.opts.maxReconnectDelay, this.opts.minReconnectDelay * 2 ** Math.min(this.attempt, 16));
    return Math.random() * cap;
  }

  private startHeartbeat(): void {
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.lastHeard = Date.now();
    // The server pings with WebSocket pings, which browsers do not show to scripts: after a
    // heartbeat of silence, ask with an application ping; no answer in time means dead.
    const every = Math.max(1000, Math.min(this.heartbeatMs, 30_000) / 2);
    this.heartbeatTimer = setInterval(() => {
      const silent = Date.now() - this.lastHeard;
      if (silent > this.heartbeatMs + this.opts.pongTimeout) {
        const ws = this.ws;
        this.ws = undefined;
        try {
          ws?.close(DEAD_CONNECTION, "no traffic");
        } catch {
          // ignore
        }
        this.onClose(DEAD_CONNECTION, "no traffic", false);
      } else if (silent > this.heartbeatMs && this.stateValue === "connected") {
        this.request({ type: "ping" }).catch(() => {});
      }
    }, every);
  }

  private scheduleRefresh(exp: number | undefined): void {
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    if (!exp || !this.options.getToken) return;
    const wait = Math.max(0, exp * 1000 - Date.now() - this.opts.refreshBefore);
    this.refreshTimer = setTimeout(async () => {
      try {
        this.token = await this.options.getToken!();
        const reply = await this.request({ type: "refresh", token: this.token });
        this.scheduleRefresh(reply.exp);
      } catch (error) {
        this.emit("error", { code: "refresh", message: String(error) });
      }
    }, wait);
  }

  // --- requests ---

  private request(frame: Record<string, unknown>, onReply?: (reply: any) => void): Promise<any> {
    const ws = this.ws;
    if (!ws || ws.readyState !== 1) {
      return Promise.reject(new SwitchboardError("disconnected", "not connected"));
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => this.settle(id, undefined, new SwitchboardError("timeout", `no reply to ${frame.type}`)),
        this.opts.requestTimeout,
      );
      this.pending.set(id, { onReply, resolve, reject, timer });
      ws.send(JSON.stringify({ ...frame, id }));
    });
  }

  private settle(id: number, reply: any, error: Error | undefined): void {
    const pending = this.pending.get(id);
    if (!pending) return;
    this.pending.delete(id);
    clearTimeout(pending.timer);
    if (error) return pending.reject(error);
    try {
      pending.onReply?.(reply);
    } catch (handlerError) {
      this.emit("error", { code: "handler", message: String(handlerError) });
    }
    pending.resolve(reply);
  }

  private failPending(code: string, message: string): void {
    for (const [id] of this.pending) this.settle(id, undefined, new SwitchboardError(code, message));
  }

  private whenConnected(): Promise<void> {
    if (this.stateValue === "connected") return Promise.resolve();
    if (this.stateValue === "closed") return Promise.reject(new SwitchboardError("closed", "the client is closed"));
    if (this.stateValue === "disconnected") this.connect();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        off();
        reject(new SwitchboardError("timeout", "not connected in time"));
      }, this.opts.requestTimeout);
      const off = this.on("connected", () => {
        clearTimeout(timer);
        off();
        resolve();
      });
    });
  }

  private clearTimers(): void {
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    if (this.connectTimer) clearTimeout(this.connectTimer);
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    if (this.heartbeatTimer) clearInterval(this.heartbeatTimer);
    this.reconnectTimer = this.connectTimer = this.refreshTimer = this.heartbeatTimer = undefined;
  }

  private setState(state: State): void {
    this.stateValue = state;
  }

  private emit(event: EventName, detail: unknown): void {
    for (const listener of this.listeners.get(event) ?? []) {
      try {
        listener(detail);
      } catch {
        // A listener's error must not break the client.
      }
    }
  }
}
