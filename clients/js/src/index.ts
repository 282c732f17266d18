/**
 * turnout-client: the client of a turnout cluster, for browsers and Node.
 *
 * One `Client` is one WebSocket connection (through the gateway or straight
 * to a node) that keeps itself alive: it reconnects with backoff and jitter
 * where the close code says to, follows `redirect` and `reconnect`, rejoins
 * every room with `since` and `epoch`, rejoins on a seq jump, and resends
 * unacked publishes with their ids, which the server takes once. What the
 * application sees of a room is each message once, in seq order, and, when
 * history could not fill a hole, `recovered: false`.
 *
 * The protocol it speaks is in docs/PROTOCOL.md; its API in docs/CLIENT.md.
 */

/** Why a room is rejoined: a seq jump, a replay cut at `max_replay_bytes`, or the node forgot it. */
export type RejoinReason = "gap" | "replay_cut" | "not_joined" | "already_member";

/** Where the connection is. */
export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

/** A room message. */
export interface Message<T = unknown> {
  room: string;
  seq: number;
  /** The publishing user (or the server API's `from`). */
  from: string;
  /** The node it was published on. */
  node: string;
  /** Milliseconds since the Unix epoch, set by that node. */
  ts: number;
  data: T;
}

/** Someone else's connection joined or left a room. */
export interface PresenceEvent {
  room: string;
  event: "join" | "leave";
  user: string;
  /** The users in the room as far as this client knows now. */
  users: string[];
}

/** Every `joined` of a room: the first join and each rejoin. */
export interface JoinedInfo {
  room: string;
  /** The room's latest seq when joined. */
  seq: number;
  /** The room's history epoch. */
  epoch: string;
  presence: string[];
  /** True on the first join of the room. */
  first: boolean;
  /**
   * On a rejoin: whether history held every message missed meanwhile (they
   * follow, before live ones). `false`: some are gone for good (the room's
   * state was lost or history trimmed); the messages go on after the hole.
   */
  recovered?: boolean;
}

export interface RoomHandlers<T = unknown> {
  onMessage?(m: Message<T>): void;
  onPresence?(e: PresenceEvent): void;
  onJoined?(info: JoinedInfo): void;
}

export interface PublishOptions {
  /** The publish id (at most 64 bytes); by default one unique to this client. */
  id?: string;
}

export interface PublishResult {
  seq: number;
  /** The id had been accepted before: `seq` is that publish's. */
  duplicate: boolean;
}

/** The part of the WebSocket API the client uses. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export interface ClientOptions {
  /** The user id (a hint: a token's `sub` wins). */
  user?: string;
  /** A client token (JWT), sent as `?token=`. */
  token?: string;
  /**
   * Returns a fresh token. Called before the current one expires (its
   * `exp`, less `refreshBeforeMs`) and when the server says it expired;
   * without it a connection ends at the token's `exp`.
   */
  refreshToken?: () => string | Promise<string>;
  /** How long before `exp` to refresh. Default 30 s. */
  refreshBeforeMs?: number;
  /** The room to route by (`?room=`; sticky). Default: the first room joined. */
  room?: string;
  /** A WebSocket implementation (Node < 22: e.g. `ws`). Default: the global one. */
  WebSocket?: WebSocketConstructor;
  /** First reconnect delay (then doubling, with jitter). Default 250 ms. */
  minBackoffMs?: number;
  /** Longest reconnect delay. Default 10 s. */
  maxBackoffMs?: number;
  /** A `ping` after this long without a frame; 0 = never. Default 15 s. */
  pingIntervalMs?: number;
  /** A connection silent this long after a ping is given up (0: never). Default 10 s. */
  pongTimeoutMs?: number;
  /** A connection that brings no `welcome` this long is given up. Default 10 s. */
  connectTimeoutMs?: number;
  /**
   * A publish not acked this long after `publish` rejects; 0 = never.
   * Default 60 s. Keep it under the server's `dedupe_window` (2 min): a
   * resend later than that is published again.
   */
  publishTimeoutMs?: number;
  /** Largest publish frame sent (the server's `max_frame_bytes`). Default 65,536. */
  maxFrameBytes?: number;
  /** Prefix of generated publish ids. Default: random, one per client. */
  idPrefix?: string;
}

/** A refusal from the server, or the connection's end. */
export class TurnoutError extends Error {
  /** An error code of docs/PROTOCOL.md, or `closed`, `timeout`, `too_large`, `token_expired`, `no_websocket`, `bad_url`. */
  readonly code: string;
  readonly room?: string;
  /** The close code, when the connection ended. */
  readonly closeCode?: number;
  constructor(code: string, message: string, extra: { room?: string; closeCode?: number } = {}) {
    super(message);
    this.name = "TurnoutError";
    this.code = code;
    this.room = extra.room;
    this.closeCode = extra.closeCode;
  }
}

export interface ClientEvents {
  /** The connection's state changed. */
  state: (state: ConnectionState) => void;
  /** A connection opened (on `node`). */
  welcome: (w: { node: string; strategy: string; conn: string; data?: unknown }) => void;
  /** A room lives on another node (sticky): the client moves there. */
  redirect: (r: { room: string; url: string }) => void;
  /** The node asked its clients to reconnect (`draining`, `lease_lost`). */
  reconnect: (r: { reason: string }) => void;
  /**
   * The connection to `node` (null: it never got a welcome) ended;
   * `retryInMs` is null when the client gives up. Code 4000: the client
   * left a node that does not own a room (`wrong_node`).
   */
  disconnect: (d: { code: number; reason: string; node: string | null; retryInMs: number | null }) => void;
  /** A room is rejoined (left and joined again with `since`) to fill a hole. */
  rejoin: (r: { room: string; since: number | null; reason: RejoinReason }) => void;
  /** A refusal not tied to one `publish` or `join`. */
  error: (e: TurnoutError) => void;
}

/** Publish ids: the server takes at most 64 bytes. */
const MAX_ID_BYTES = 64;
const OPEN = 1;
/** A connection up this long counts as healthy: backoff and redirect streaks start over. */
const STABLE_MS = 5_000;
/** Room names as the server checks them: a name, or a personal room (`#` and a user id). */
const ROOM = /^#?[A-Za-z0-9\-_.:@]{1,64}$/;

// Close codes after which reconnecting as is would fail the same way: a
// protocol error, bad data, a frame too big, and the "do not reconnect as
// is" range. 3010 (token expired) reconnects with a fresh token. 1008 (over
// the server's limits) is not among them: this client paces itself, so it
// means limits set lower than its pace; it comes back after the longest
// backoff rather than leave its user disconnected for good.
function terminal(code: number): boolean {
  // 4403: the backend's connect hook refused the connection.
  return [1002, 1003, 1007, 1009, 1010].includes(code) || (code >= 3500 && code <= 3999) || code === 4403;
}

/** The pace joins fall back to after a `rate_limited` join: one per this many ms, doubling on each further refusal. */
const JOIN_PACE_MS = 200;

// Refusals that a later try can cure (a publish is resent with its id, a
// join or leave sent again).
const RETRY = new Set(["rate_limited", "unavailable", "internal"]);
// Refusals of a publish meaning "not here, not now": it waits for the next join.
const WAIT_PUBLISH = new Set(["not_joined", "wrong_node", "draining"]);
// Refusals of a join that no retry cures.
const JOIN_REFUSED = new Set(["forbidden", "bad_name", "too_many_rooms", "bad_frame", "unauthorized"]);

interface Pending {
  id: string;
  room: string;
  /** The publish frame, serialised once. */
  frame: string;
  sent: boolean;
  notBefore: number;
  tries: number;
  resolve: (r: PublishResult) => void;
  reject: (e: TurnoutError) => void;
  timer?: ReturnType<typeof setTimeout>;
}

function randomPrefix(): string {
  const bytes = new Uint8Array(9);
  const c = (globalThis as { crypto?: { getRandomValues?: (a: Uint8Array) => Uint8Array } }).crypto;
  if (c?.getRandomValues) c.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (b) => b.toString(36).padStart(2, "0")).join("");
}

/** `exp` of a JWT, in milliseconds, if it has one. */
export function tokenExpiry(token: string): number | undefined {
  const part = token.split(".")[1];
  if (!part) return undefined;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const json = JSON.parse(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)));
    return typeof json.exp === "number" ? json.exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

function utf8Length(s: string): number {
  return encoder.encode(s).length;
}

/** A delay of `min·2^tries`, at most `max`: half fixed, half random. */
function jittered(min: number, max: number, tries: number): number {
  const base = Math.min(max, min * 2 ** Math.min(tries, 20));
  return Math.round(base / 2 + (Math.random() * base) / 2);
}

/**
 * Where a room is on the current connection: not asked for yet, a `join`
 * sent, a `leave` sent to rejoin (then a `join`), or joined.
 */
type Phase = "idle" | "joining" | "leaving" | "joined";

/** One room of a client, joined across reconnects until `leave`. */
export class Room<T = unknown> {
  readonly name: string;
  /**
   * Where the application is in the room: the last seq handed to
   * `onMessage`, or the room's seq when it was joined (null before).
   */
  lastSeq: number | null = null;
  /** The room's history epoch as last joined. */
  epoch = "";
  /**
   * Users in the room as far as this client knows: the `joined` list, then
   * presence events (a user with two connections who closes one is
   * counted out until the next join).
   */
  readonly presence = new Set<string>();
  /** @internal */ phase: Phase = "idle";
  /** @internal */ joinSentSince = false;
  /** @internal */ joinSentPaced = false;
  /** @internal */ acceptJump = false;
  /** @internal */ replayUntil: number | null = null;
  /** @internal */ everJoined = false;
  /** @internal */ tries = 0;
  /** @internal */ retryTimer: ReturnType<typeof setTimeout> | undefined;
  /** @internal */ readonly handlers: RoomHandlers<T>;
  /** @internal */ waiters: { resolve: (r: Room<T>) => void; reject: (e: TurnoutError) => void }[] = [];
  readonly #client: Client;

  /** @internal */
  constructor(client: Client, name: string, handlers: RoomHandlers<T>) {
    this.#client = client;
    this.name = name;
    this.handlers = handlers;
  }

  /** Whether the room is joined on the current connection. */
  get joined(): boolean {
    return this.phase === "joined";
  }

  /** Publishes `data`; resolves on the server's ack, across reconnects. */
  publish(data: T | unknown, opts: PublishOptions = {}): Promise<PublishResult> {
    return this.#client.publish(this.name, data, opts);
  }

  /** Leaves the room; its unacked publishes are rejected. */
  leave(): void {
    this.#client.leave(this.name);
  }
}

type Listener = (...args: any[]) => void;

type Settings = Required<
  Pick<
    ClientOptions,
    | "minBackoffMs"
    | "maxBackoffMs"
    | "pingIntervalMs"
    | "pongTimeoutMs"
    | "connectTimeoutMs"
    | "publishTimeoutMs"
    | "refreshBeforeMs"
    | "maxFrameBytes"
  >
> &
  ClientOptions;

export class Client {
  readonly url: string;
  #opts: Settings;
  #WS: WebSocketConstructor | undefined;
  #ws: WebSocketLike | null = null;
  #state: ConnectionState = "idle";
  #token: string | undefined;
  #tokenStale = false;
  #redirect: string | null = null;
  #redirectStreak = 0;
  #attempt = 0;
  #openedAt = 0;
  #reconnectTimer: ReturnType<typeof setTimeout> | undefined;
  #welcomeTimer: ReturnType<typeof setTimeout> | undefined;
  #pingTimer: ReturnType<typeof setInterval> | undefined;
  #refreshTimer: ReturnType<typeof setTimeout> | undefined;
  #retryTimer: ReturnType<typeof setTimeout> | undefined;
  #retryAt = Infinity;
  #lastFrame = 0;
  #pingSent = 0;
  #rooms = new Map<string, Room<any>>();
  /**
   * Rooms waiting to send their `join`. Joins go out at once until the
   * server refuses one `rate_limited`; then one every `#joinPaceMs`, so a
   * client in many rooms that reconnects rejoins them all within the
   * server's limits instead of being closed for going over them.
   */
  #joinQueue: Room<any>[] = [];
  #joinPaceMs = 0;
  #nextJoinAt = 0;
  #joinTimer: ReturnType<typeof setTimeout> | undefined;
  /** Rooms left on this connection whose `left` has not come yet. */
  #leaving = new Map<string, { tries: number; timer?: ReturnType<typeof setTimeout> }>();
  #pending = new Map<string, Pending>();
  /** Rpc calls waiting for their answer, by id. */
  #calls = new Map<string, { resolve: (v: unknown) => void; reject: (e: TurnoutError) => void; timer?: ReturnType<typeof setTimeout> }>();
  #idPrefix: string;
  #nextId = 0;
  #listeners = new Map<keyof ClientEvents, Set<Listener>>();
  #connectWaiters: { resolve: () => void; reject: (e: TurnoutError) => void }[] = [];
  /** The node of the current connection. */
  node: string | null = null;
  /** The cluster's strategy, as the node said. */
  strategy: string | null = null;

  constructor(url: string, opts: ClientOptions = {}) {
    this.url = url;
    this.#opts = {
      minBackoffMs: 250,
      maxBackoffMs: 10_000,
      pingIntervalMs: 15_000,
      pongTimeoutMs: 10_000,
      connectTimeoutMs: 10_000,
      publishTimeoutMs: 60_000,
      refreshBeforeMs: 30_000,
      maxFrameBytes: 65_536,
      ...opts,
    };
    this.#WS = opts.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    this.#token = opts.token;
    this.#idPrefix = opts.idPrefix ?? randomPrefix();
  }

  /** Where the connection is. */
  get state(): ConnectionState {
    return this.#state;
  }

  /** Publishes waiting for their ack. */
  get unacked(): number {
    return this.#pending.size;
  }

  /** Subscribes to a client event; returns the way to unsubscribe. */
  on<E extends keyof ClientEvents>(event: E, fn: ClientEvents[E]): () => void {
    let set = this.#listeners.get(event);
    if (!set) this.#listeners.set(event, (set = new Set()));
    set.add(fn as Listener);
    return () => set.delete(fn as Listener);
  }

  #emit<E extends keyof ClientEvents>(event: E, ...args: Parameters<ClientEvents[E]>): void {
    for (const fn of this.#listeners.get(event) ?? []) {
      try {
        fn(...args);
      } catch (e) {
        console.error("turnout-client: a listener threw", e);
      }
    }
  }

  #setState(s: ConnectionState): void {
    if (this.#state === s) return;
    this.#state = s;
    this.#emit("state", s);
  }

  /**
   * Opens the connection; resolves once a node welcomed it. Failed
   * attempts are retried with backoff; it rejects only when the client
   * gives up (a terminal close code) or is closed.
   */
  connect(): Promise<void> {
    if (this.#state === "open") return Promise.resolve();
    if (this.#state === "closed") {
      return Promise.reject(new TurnoutError("closed", "the client was closed"));
    }
    const p = new Promise<void>((resolve, reject) => this.#connectWaiters.push({ resolve, reject }));
    if (this.#state === "idle") this.#open();
    return p;
  }

  /**
   * Joins `room`; resolves on the first `joined`. The room stays joined
   * across reconnects until `leave` (or `close`).
   */
  join<T = unknown>(room: string, handlers: RoomHandlers<T> = {}): Promise<Room<T>> {
    if (this.#state === "closed") {
      return Promise.reject(new TurnoutError("closed", "the client was closed", { room }));
    }
    if (typeof room !== "string" || !ROOM.test(room)) {
      return Promise.reject(
        new TurnoutError("bad_name", "a room name is 1-64 bytes of [A-Za-z0-9-_.:@] (a personal room: # and a user id)", {
          room: String(room),
        }),
      );
    }
    const existing = this.#rooms.get(room);
    if (existing) {
      return existing.everJoined
        ? Promise.resolve(existing)
        : new Promise((resolve, reject) => existing.waiters.push({ resolve, reject }));
    }
    // A leave of this room still retrying would undo this join.
    const leaving = this.#leaving.get(room);
    if (leaving) {
      clearTimeout(leaving.timer);
      this.#leaving.delete(room);
    }
    const r = new Room<T>(this, room, handlers);
    this.#rooms.set(room, r);
    const p = new Promise<Room<T>>((resolve, reject) => r.waiters.push({ resolve, reject }));
    if (this.#state === "idle") this.#open();
    else if (this.#isOpen()) this.#sendJoin(r);
    return p;
  }

  /** Leaves `room`; its unacked publishes are rejected. */
  leave(room: string): void {
    const r = this.#rooms.get(room);
    if (!r) return;
    this.#rooms.delete(room);
    clearTimeout(r.retryTimer);
    const err = new TurnoutError("closed", "left the room", { room });
    for (const w of r.waiters.splice(0)) w.reject(err);
    for (const p of [...this.#pending.values()]) if (p.room === room) this.#settle(p, err);
    if (this.#isOpen() && r.phase !== "idle") {
      this.#leaving.set(room, { tries: 0 });
      this.#send({ type: "leave", room });
    }
  }

  /** Publishes into a joined room; resolves on the ack, across reconnects. */
  publish(room: string, data: unknown, opts: PublishOptions = {}): Promise<PublishResult> {
    const fail = (code: string, message: string) => Promise.reject(new TurnoutError(code, message, { room }));
    if (this.#state === "closed") return fail("closed", "the client was closed");
    if (!this.#rooms.has(room)) return fail("not_joined", `join ${room} before publishing`);
    if (data === undefined) return fail("bad_frame", "data must be a JSON value, not undefined");
    const id = opts.id ?? `${this.#idPrefix}-${++this.#nextId}`;
    if (utf8Length(id) > MAX_ID_BYTES) return fail("bad_frame", `a publish id is at most ${MAX_ID_BYTES} bytes`);
    if (this.#pending.has(id)) return fail("bad_frame", `publish id ${id} is already waiting for its ack`);
    let frame: string;
    try {
      frame = JSON.stringify({ type: "publish", room, data, id });
    } catch (e) {
      return fail("bad_frame", `data cannot be sent as JSON: ${(e as Error).message}`);
    }
    // The server closes the connection (1009) on a frame over its limit.
    if (utf8Length(frame) > this.#opts.maxFrameBytes) {
      return fail("too_large", `the publish is over ${this.#opts.maxFrameBytes} bytes (maxFrameBytes)`);
    }
    return new Promise<PublishResult>((resolve, reject) => {
      const p: Pending = { id, room, frame, sent: false, notBefore: 0, tries: 0, resolve, reject };
      if (this.#opts.publishTimeoutMs > 0) {
        p.timer = setTimeout(
          () => this.#settle(p, new TurnoutError("timeout", `no ack within ${this.#opts.publishTimeoutMs} ms`, { room })),
          this.#opts.publishTimeoutMs,
        );
      }
      this.#pending.set(id, p);
      this.#flush(room);
    });
  }

  /**
   * Asks the backend's rpc hook (`method`, `data`) over this connection;
   * resolves with its answer, rejects with its refusal (`rejected`),
   * `unavailable` (the backend did not answer: the call may be made
   * again), `disconnected` (the connection ended first: whether the backend
   * saw it is unknown) or `timeout`. Not resent by itself.
   */
  rpc(method: string, data: unknown = null, opts: { timeoutMs?: number } = {}): Promise<unknown> {
    const fail = (code: string, message: string) => Promise.reject(new TurnoutError(code, message));
    if (this.#state === "closed") return fail("closed", "the client was closed");
    if (!this.#isOpen()) return fail("disconnected", "not connected; call rpc once connected");
    const id = `${this.#idPrefix}-r${++this.#nextId}`;
    let frame: string;
    try {
      frame = JSON.stringify({ type: "rpc", id, method, data });
    } catch (e) {
      return fail("bad_frame", `data cannot be sent as JSON: ${(e as Error).message}`);
    }
    if (utf8Length(frame) > this.#opts.maxFrameBytes) {
      return fail("too_large", `the rpc is over ${this.#opts.maxFrameBytes} bytes (maxFrameBytes)`);
    }
    return new Promise<unknown>((resolve, reject) => {
      const call: { resolve: (v: unknown) => void; reject: (e: TurnoutError) => void; timer?: ReturnType<typeof setTimeout> } = { resolve, reject };
      const timeoutMs = opts.timeoutMs ?? this.#opts.publishTimeoutMs;
      if (timeoutMs > 0) {
        call.timer = setTimeout(() => this.#answer(id, new TurnoutError("timeout", `no answer within ${timeoutMs} ms`)), timeoutMs);
      }
      this.#calls.set(id, call);
      this.#send(frame);
    });
  }

  /** Settles rpc `id` with an error, or with `value`. */
  #answer(id: string, err?: TurnoutError, value?: unknown): void {
    const call = this.#calls.get(id);
    if (!call) return;
    this.#calls.delete(id);
    clearTimeout(call.timer);
    if (err) call.reject(err);
    else call.resolve(value);
  }

  /** Closes the connection for good; everything pending rejects with `closed`. */
  close(): void {
    if (this.#state === "closed") return;
    const ws = this.#ws;
    this.#ws = null;
    if (ws) {
      this.#detach(ws);
      try {
        ws.close(1000, "client closed");
      } catch {
        /* already closing */
      }
    }
    this.#giveUp(new TurnoutError("closed", "the client was closed"), false);
  }

  // ------------------------------------------------------------ connection

  #isOpen(): boolean {
    return this.#ws !== null && this.#ws.readyState === OPEN && this.node !== null;
  }

  #buildUrl(base: string): string {
    const u = new URL(base);
    const room = this.#opts.room ?? this.#rooms.keys().next().value;
    if (this.#opts.user && !u.searchParams.has("user")) u.searchParams.set("user", this.#opts.user);
    if (room && !u.searchParams.has("room")) u.searchParams.set("room", room);
    if (this.#token) u.searchParams.set("token", this.#token);
    return u.toString();
  }

  #open(): void {
    clearTimeout(this.#reconnectTimer);
    if (!this.#WS) {
      this.#giveUp(
        new TurnoutError(
          "no_websocket",
          "no WebSocket implementation: pass one in the options (e.g. the `ws` package), or run Node 22+ (Node 20: --experimental-websocket)",
        ),
      );
      return;
    }
    this.#setState(this.#state === "idle" ? "connecting" : "reconnecting");
    const target = this.#redirect ?? this.url;
    this.#redirect = null;
    let ws: WebSocketLike;
    try {
      ws = new this.#WS(this.#buildUrl(target));
    } catch (e) {
      const err = new TurnoutError("bad_url", `cannot open ${target}: ${(e as Error).message}`);
      if (target === this.url) {
        this.#giveUp(err);
      } else {
        // A redirect that cannot be followed: back through the gateway.
        this.#emit("error", err);
        this.#onClose(1006, "bad redirect");
      }
      return;
    }
    this.#ws = ws;
    this.node = null;
    this.#welcomeTimer = setTimeout(() => this.#drop(1006, "no welcome"), this.#opts.connectTimeoutMs);
    ws.onmessage = (ev) => {
      if (this.#ws !== ws) return;
      this.#lastFrame = Date.now();
      this.#pingSent = 0;
      let f: Record<string, any>;
      try {
        f = JSON.parse(typeof ev.data === "string" ? ev.data : decoder.decode(ev.data as ArrayBuffer));
      } catch {
        return;
      }
      if (f && typeof f === "object") this.#onFrame(f);
    };
    ws.onclose = (ev) => {
      if (this.#ws !== ws) return;
      this.#onClose(ev.code, ev.reason);
    };
    ws.onerror = () => {
      if (this.#ws !== ws) return;
      // A connection that never opened (refused, or its upgrade answered
      // with an error) is over: Node's WebSocket reports it with `error`
      // alone, no `close`, and waiting for one would hold the reconnect
      // until the welcome timeout. After it opened, a close follows.
      if (ws.readyState !== OPEN) this.#drop(1006, "connection failed");
    };
  }

  #detach(ws: WebSocketLike): void {
    ws.onmessage = ws.onclose = ws.onerror = ws.onopen = null;
  }

  /** Gives up on the current socket (dead peer, redirect) and goes on as if it closed. */
  #drop(code: number, reason: string): void {
    const ws = this.#ws;
    if (!ws) return;
    this.#detach(ws);
    try {
      ws.close(1000, reason);
    } catch {
      /* already closing */
    }
    this.#onClose(code, reason);
  }

  /** Stops every timer of the connection (not the token refresh). */
  #stopTimers(): void {
    clearTimeout(this.#reconnectTimer);
    clearTimeout(this.#welcomeTimer);
    clearInterval(this.#pingTimer);
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#joinTimer);
    this.#pingTimer = undefined;
    this.#retryTimer = undefined;
    this.#joinTimer = undefined;
    this.#joinQueue = [];
    this.#retryAt = Infinity;
    for (const r of this.#rooms.values()) clearTimeout(r.retryTimer);
    for (const l of this.#leaving.values()) clearTimeout(l.timer);
  }

  #onClose(code: number, reason: string): void {
    const node = this.node;
    const upFor = this.#openedAt ? Date.now() - this.#openedAt : 0;
    this.#openedAt = 0;
    this.#ws = null;
    this.node = null;
    this.#stopTimers();
    // The connection's memberships went with it.
    this.#leaving.clear();
    for (const r of this.#rooms.values()) r.phase = "idle";
    for (const p of this.#pending.values()) p.sent = false;
    // An rpc is not resent: its caller hears the connection ended.
    for (const id of [...this.#calls.keys()]) {
      this.#answer(id, new TurnoutError("disconnected", "the connection ended before the answer", { closeCode: code }));
    }
    if (this.#state === "closed") return;
    if (terminal(code) || (code === 3010 && !this.#opts.refreshToken)) {
      this.#emit("disconnect", { code, reason, node, retryInMs: null });
      const err =
        code === 3010
          ? new TurnoutError("token_expired", "the token expired and no refreshToken was given", { closeCode: code })
          : new TurnoutError("closed", `closed by the server (${code}${reason ? ": " + reason : ""})`, { closeCode: code });
      this.#giveUp(err);
      return;
    }
    if (code === 3010) this.#tokenStale = true;
    if (upFor >= STABLE_MS) {
      this.#attempt = 0;
      this.#redirectStreak = 0;
    }
    // A redirect is followed soon (within `minBackoffMs`, at random, so the
    // members of a room that moved do not arrive at once), but not round
    // and round. Over the server's limits (1008): the longest backoff.
    const wait =
      this.#redirect !== null && this.#redirectStreak <= 1
        ? Math.round(Math.random() * this.#opts.minBackoffMs)
        : code === 1008
          ? jittered(this.#opts.maxBackoffMs, this.#opts.maxBackoffMs, 0)
          : jittered(this.#opts.minBackoffMs, this.#opts.maxBackoffMs, this.#attempt++);
    this.#emit("disconnect", { code, reason, node, retryInMs: wait });
    this.#setState("reconnecting");
    this.#reconnectTimer = setTimeout(() => void this.#reopen(), wait);
  }

  /** Opens again, with a fresh token first when the last one expired. */
  async #reopen(): Promise<void> {
    const exp = this.#token ? tokenExpiry(this.#token) : undefined;
    if (this.#opts.refreshToken && (this.#tokenStale || (exp !== undefined && exp <= Date.now()))) {
      try {
        this.#token = await this.#opts.refreshToken();
        this.#tokenStale = false;
      } catch (e) {
        if (this.#state === "closed") return;
        // Try anyway: the refusal closes the socket and brings us back here.
        this.#emit("error", new TurnoutError("token_expired", `refreshToken failed: ${(e as Error).message}`));
      }
    }
    if (this.#state !== "closed") this.#open();
  }

  /** Ends everything with `err`; an `error` event unless the application closed. */
  #giveUp(err: TurnoutError, emit = true): void {
    this.#stopTimers();
    clearTimeout(this.#refreshTimer);
    this.#setState("closed");
    for (const w of this.#connectWaiters.splice(0)) w.reject(err);
    for (const r of this.#rooms.values()) {
      for (const w of r.waiters.splice(0)) w.reject(err);
    }
    for (const p of [...this.#pending.values()]) this.#settle(p, err);
    for (const id of [...this.#calls.keys()]) this.#answer(id, err);
    if (emit) this.#emit("error", err);
  }

  #send(f: Record<string, unknown> | string): void {
    try {
      this.#ws?.send(typeof f === "string" ? f : JSON.stringify(f));
    } catch {
      /* the close that follows handles it */
    }
  }

  #startPing(): void {
    clearInterval(this.#pingTimer);
    const every = this.#opts.pingIntervalMs;
    const patience = this.#opts.pongTimeoutMs;
    if (every <= 0 || patience <= 0) return;
    this.#lastFrame = Date.now();
    this.#pingTimer = setInterval(
      () => {
        const now = Date.now();
        if (this.#pingSent && now - this.#pingSent > patience) {
          this.#drop(1006, "no answer to ping");
        } else if (!this.#pingSent && now - this.#lastFrame >= every) {
          this.#pingSent = now;
          this.#send({ type: "ping" });
        }
      },
      Math.max(50, Math.min(every, patience) / 2),
    );
  }

  #scheduleRefresh(): void {
    clearTimeout(this.#refreshTimer);
    if (!this.#opts.refreshToken || !this.#token || this.#state === "closed") return;
    const exp = tokenExpiry(this.#token);
    if (exp === undefined) return;
    const left = exp - Date.now();
    // `refreshBeforeMs` ahead, but not in a loop when tokens live shorter.
    const wait = Math.max(1_000, Math.min(left - this.#opts.refreshBeforeMs, left / 2));
    this.#refreshTimer = setTimeout(async () => {
      let token: string;
      try {
        token = await this.#opts.refreshToken!();
      } catch (e) {
        if (this.#state === "closed") return;
        this.#emit("error", new TurnoutError("unauthorized", `refreshToken failed: ${(e as Error).message}`));
        return;
      }
      if (this.#state === "closed") return;
      this.#token = token;
      if (this.#isOpen()) this.#send({ type: "refresh", token });
      else this.#scheduleRefresh();
    }, Math.min(wait, 2 ** 31 - 1));
  }

  // ------------------------------------------------------------ frames

  #onFrame(f: Record<string, any>): void {
    switch (f.type) {
      case "welcome":
        return this.#onWelcome(f);
      case "joined":
        return this.#onJoined(f);
      case "left":
        return this.#onLeft(f);
      case "message":
        return this.#onMessage(f);
      case "ack":
        return this.#onAck(f);
      case "presence":
        return this.#onPresence(f);
      case "error":
        return this.#onError(f);
      case "reconnect":
        // Through the gateway again; the node closes with 1012.
        this.#redirect = null;
        this.#emit("reconnect", { reason: String(f.reason ?? "") });
        return;
      case "refreshed":
        this.#scheduleRefresh();
        return;
      case "rpc_result":
        return this.#answer(String(f.id), undefined, f.data);
      default:
        return; // pong, and frames of later versions
    }
  }

  #onWelcome(f: Record<string, any>): void {
    clearTimeout(this.#welcomeTimer);
    this.node = String(f.node);
    this.strategy = String(f.strategy);
    this.#openedAt = Date.now();
    this.#setState("open");
    this.#startPing();
    this.#scheduleRefresh();
    this.#emit("welcome", { node: this.node, strategy: this.strategy, conn: String(f.conn ?? ""), data: f.data });
    for (const w of this.#connectWaiters.splice(0)) w.resolve();
    for (const r of this.#rooms.values()) this.#sendJoin(r);
  }

  /** Queues the room's `join`: sent at once, or at the join pace. */
  #sendJoin(r: Room<any>): void {
    r.phase = "joining";
    if (!this.#joinQueue.includes(r)) this.#joinQueue.push(r);
    this.#pumpJoins();
  }

  /** Sends queued joins, at the pace when there is one. */
  #pumpJoins(): void {
    clearTimeout(this.#joinTimer);
    this.#joinTimer = undefined;
    while (this.#joinQueue.length > 0 && this.#isOpen()) {
      const now = Date.now();
      if (this.#joinPaceMs > 0 && now < this.#nextJoinAt) {
        this.#joinTimer = setTimeout(() => this.#pumpJoins(), this.#nextJoinAt - now);
        return;
      }
      const r = this.#joinQueue.shift()!;
      // Left meanwhile, or its join went another way.
      if (this.#rooms.get(r.name) !== r || r.phase !== "joining") continue;
      this.#joinNow(r);
      if (this.#joinPaceMs > 0) this.#nextJoinAt = now + this.#joinPaceMs;
    }
  }

  /**
   * The server refused a join `rate_limited`: slow down (more, if it was
   * sent at the pace already), and try it again in turn.
   */
  #joinRefused(r: Room<any>): void {
    if (r.joinSentPaced) this.#joinPaceMs = Math.min(this.#opts.maxBackoffMs, this.#joinPaceMs * 2);
    else if (this.#joinPaceMs === 0) this.#joinPaceMs = JOIN_PACE_MS;
    this.#nextJoinAt = Date.now() + this.#joinPaceMs;
    this.#sendJoin(r);
  }

  #joinNow(r: Room<any>): void {
    const f: Record<string, unknown> = { type: "join", room: r.name };
    if (r.lastSeq !== null) {
      f.since = r.lastSeq;
      if (r.epoch) f.epoch = r.epoch;
    }
    r.phase = "joining";
    r.joinSentSince = r.lastSeq !== null;
    r.joinSentPaced = this.#joinPaceMs > 0;
    this.#send(f);
  }

  /** Leaves and joins again with `since`: the replay fills the hole. */
  #rejoin(r: Room<any>, reason: RejoinReason): void {
    if (r.phase !== "joined") return; // a join or rejoin is under way
    this.#emit("rejoin", { room: r.name, since: r.lastSeq, reason });
    r.phase = "leaving";
    this.#send({ type: "leave", room: r.name });
  }

  /** Runs `fn` for the room after a backoff, if the room is still where it was. */
  #later(r: Room<any>, phase: Phase, fn: () => void): void {
    clearTimeout(r.retryTimer);
    r.retryTimer = setTimeout(
      () => {
        if (this.#rooms.get(r.name) === r && r.phase === phase && this.#isOpen()) fn();
      },
      jittered(this.#opts.minBackoffMs, this.#opts.maxBackoffMs, r.tries++),
    );
  }

  #onLeft(f: Record<string, any>): void {
    const room = String(f.room);
    const r = this.#rooms.get(room);
    if (r && r.phase === "leaving") {
      this.#sendJoin(r);
      return;
    }
    this.#leaving.delete(room);
  }

  #onJoined(f: Record<string, any>): void {
    const r = this.#rooms.get(f.room);
    if (!r) return;
    // A join answered, or the node starting the room over (Redis lost its
    // state) while it is joined; anything else answers nothing we wait for.
    if (r.phase !== "joining" && r.phase !== "joined") return;
    if (r.phase === "joining" && r.joinSentSince && f.recovered === undefined) {
      // The answer to a join of a room this connection is still in (its
      // leave was refused): no replay came. Leave and join again.
      r.phase = "joined";
      this.#later(r, "joined", () => this.#rejoin(r, "already_member"));
      return;
    }
    const seq = Number(f.seq);
    const epoch = String(f.epoch ?? "");
    const first = !r.everJoined;
    const since = r.lastSeq;
    r.acceptJump = false;
    if (since === null) {
      r.lastSeq = seq;
    } else {
      const epochChanged = r.epoch !== "" && epoch !== r.epoch;
      if (epochChanged || since > seq) {
        // The room started over: what comes next counts from its seq.
        r.lastSeq = seq;
      } else if (f.recovered === false) {
        // History lost some: what it still holds comes next, after a hole.
        r.acceptJump = true;
      }
    }
    r.epoch = epoch;
    r.phase = "joined";
    r.everJoined = true;
    r.tries = 0;
    // Every join went through at the pace: full speed again.
    if (this.#joinQueue.length === 0) this.#joinPaceMs = 0;
    r.replayUntil = typeof f.replay_until === "number" ? f.replay_until : null;
    r.presence.clear();
    for (const u of f.presence ?? []) r.presence.add(String(u));
    const info: JoinedInfo = { room: r.name, seq, epoch, presence: [...r.presence], first };
    if (since !== null) info.recovered = f.recovered !== false;
    call(() => r.handlers.onJoined?.(info));
    for (const w of r.waiters.splice(0)) w.resolve(r);
    this.#flush(r.name);
  }

  #onMessage(f: Record<string, any>): void {
    const r = this.#rooms.get(f.room);
    // Not joined here (yet): the join's replay brings what matters.
    if (!r || r.phase !== "joined") return;
    const seq = Number(f.seq);
    if (r.lastSeq !== null && seq <= r.lastSeq) return; // had it
    if (r.lastSeq !== null && seq > r.lastSeq + 1 && !r.acceptJump) {
      // A hole: ask history for it (messages past it come again after).
      this.#rejoin(r, "gap");
      return;
    }
    r.acceptJump = false;
    r.lastSeq = seq;
    // Joined before the room had an epoch: its first message names it, and
    // a rejoin must say which epoch `since` counts in.
    if (r.epoch === "" && typeof f.epoch === "string") r.epoch = f.epoch;
    const m: Message = { room: r.name, seq, from: f.from, node: f.node, ts: f.ts, data: f.data };
    call(() => r.handlers.onMessage?.(m));
    if (r.replayUntil !== null && seq >= r.replayUntil) {
      // The replay was cut at max_replay_bytes: ask for the rest.
      r.replayUntil = null;
      this.#rejoin(r, "replay_cut");
    }
  }

  #onPresence(f: Record<string, any>): void {
    const r = this.#rooms.get(f.room);
    if (!r) return;
    const user = String(f.user);
    if (f.event === "join") r.presence.add(user);
    else r.presence.delete(user);
    const e: PresenceEvent = { room: r.name, event: f.event === "join" ? "join" : "leave", user, users: [...r.presence] };
    call(() => r.handlers.onPresence?.(e));
  }

  #onAck(f: Record<string, any>): void {
    const p = typeof f.id === "string" ? this.#pending.get(f.id) : undefined;
    if (!p) return;
    this.#settle(p, undefined, { seq: Number(f.seq), duplicate: f.duplicate === true });
  }

  #onError(f: Record<string, any>): void {
    const code = String(f.code ?? "internal");
    const err = new TurnoutError(code, String(f.message ?? code), { room: f.room });
    if (typeof f.id === "string" && this.#calls.has(f.id)) return this.#answer(f.id, err);
    const p = typeof f.id === "string" ? this.#pending.get(f.id) : undefined;
    const tracked = typeof f.room === "string" && this.#rooms.has(f.room);
    if (code === "wrong_node" && (tracked || p)) {
      // Sticky: the room lives elsewhere. Move there (or, without a
      // redirect, ask the gateway again) and rejoin everything. (A room
      // the server joined us to that we do not follow is no reason to.)
      const url = typeof f.redirect === "string" ? f.redirect : null;
      if (url) this.#emit("redirect", { room: String(f.room ?? ""), url });
      if (this.#openedAt && Date.now() - this.#openedAt >= STABLE_MS) this.#redirectStreak = 0;
      this.#redirectStreak += 1;
      this.#redirect = url;
      if (p) p.sent = false;
      this.#drop(4000, "moving to the room's owner");
      return;
    }
    if (code === "draining") {
      this.#redirect = null;
      this.#drop(1012, "node draining");
      return;
    }
    if (p) return this.#publishRefused(p, code, err);
    const room = typeof f.room === "string" ? f.room : undefined;
    const r = room !== undefined ? this.#rooms.get(room) : this.#oldestJoin(code);
    if (r) {
      if (r.phase === "leaving") {
        // The leave of a rejoin.
        if (code === "not_joined") this.#sendJoin(r);
        else if (RETRY.has(code)) this.#later(r, "leaving", () => this.#send({ type: "leave", room: r.name }));
        else this.#emit("error", err);
        return;
      }
      if (r.phase === "joining" && code === "rate_limited") {
        this.#joinRefused(r);
        return;
      }
      if (r.phase === "joining" && RETRY.has(code)) {
        this.#later(r, "joining", () => this.#sendJoin(r));
        return;
      }
      if (JOIN_REFUSED.has(code)) {
        // Refused, or no longer allowed (a fresh token's rooms).
        this.#rooms.delete(r.name);
        clearTimeout(r.retryTimer);
        for (const w of r.waiters.splice(0)) w.reject(err);
        for (const q of [...this.#pending.values()]) if (q.room === r.name) this.#settle(q, err);
        if (!r.everJoined) return; // the join's promise says it
      }
      this.#emit("error", err);
      return;
    }
    if (room !== undefined && this.#leaving.has(room)) {
      // The leave of a room the application left.
      const l = this.#leaving.get(room)!;
      if (RETRY.has(code)) {
        l.timer = setTimeout(() => {
          if (this.#leaving.get(room) === l && this.#isOpen()) this.#send({ type: "leave", room });
        }, jittered(this.#opts.minBackoffMs, this.#opts.maxBackoffMs, l.tries++));
      } else {
        this.#leaving.delete(room);
      }
      return;
    }
    if (code === "not_joined") return; // a leave of a room this connection had not joined
    this.#emit("error", err);
  }

  /** A refusal without a room (`too_many_rooms`) answers the oldest join under way. */
  #oldestJoin(code: string): Room<any> | undefined {
    if (code !== "too_many_rooms" && code !== "bad_name") return undefined;
    for (const r of this.#rooms.values()) if (r.phase === "joining") return r;
    return undefined;
  }

  #publishRefused(p: Pending, code: string, err: TurnoutError): void {
    if (RETRY.has(code)) {
      p.sent = false;
      p.tries += 1;
      p.notBefore = Date.now() + jittered(this.#opts.minBackoffMs, this.#opts.maxBackoffMs, p.tries);
      this.#scheduleFlush();
    } else if (WAIT_PUBLISH.has(code)) {
      p.sent = false;
      const r = this.#rooms.get(p.room);
      // The node does not have us in the room: join it again; the
      // publish goes after.
      if (code === "not_joined" && r) this.#rejoin(r, "not_joined");
    } else {
      this.#settle(p, err);
    }
  }

  // ------------------------------------------------------------ publishes

  #settle(p: Pending, err?: TurnoutError, result?: PublishResult): void {
    if (this.#pending.get(p.id) !== p) return;
    this.#pending.delete(p.id);
    clearTimeout(p.timer);
    if (err) p.reject(err);
    else p.resolve(result!);
  }

  /** Sends the room's unsent publishes, oldest first, once it is joined. */
  #flush(room: string): void {
    const r = this.#rooms.get(room);
    if (!r || r.phase !== "joined" || !this.#isOpen()) return;
    const now = Date.now();
    for (const p of this.#pending.values()) {
      if (p.room !== room || p.sent) continue;
      if (p.notBefore > now) {
        // Keep the order: nothing after a publish that waits goes first.
        this.#scheduleFlush();
        return;
      }
      p.sent = true;
      this.#send(p.frame);
    }
  }

  /** Arms the retry timer for the soonest publish waiting out a refusal. */
  #scheduleFlush(): void {
    const now = Date.now();
    let soonest = Infinity;
    // A room's publishes go in order, so its first unsent one says when it
    // can go on (at once, if its delay passed meanwhile). Rooms not joined
    // flush at their `joined`.
    const seen = new Set<string>();
    for (const p of this.#pending.values()) {
      if (p.sent || seen.has(p.room)) continue;
      seen.add(p.room);
      if (this.#rooms.get(p.room)?.phase === "joined") {
        soonest = Math.min(soonest, Math.max(p.notBefore, now));
      }
    }
    if (soonest === Infinity || soonest >= this.#retryAt) return;
    clearTimeout(this.#retryTimer);
    this.#retryAt = soonest;
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      this.#retryAt = Infinity;
      for (const room of this.#rooms.keys()) this.#flush(room);
    }, soonest - now);
  }
}

function call(fn: () => void): void {
  try {
    fn();
  } catch (e) {
    console.error("turnout-client: a handler threw", e);
  }
}
