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
/** A refusal from the server, or the connection's end. */
export class TurnoutError extends Error {
    /** An error code of docs/PROTOCOL.md, or `closed`, `timeout`, `too_large`, `token_expired`, `no_websocket`, `bad_url`. */
    code;
    room;
    /** The close code, when the connection ended. */
    closeCode;
    constructor(code, message, extra = {}) {
        super(message);
        this.name = "TurnoutError";
        this.code = code;
        this.room = extra.room;
        this.closeCode = extra.closeCode;
    }
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
function terminal(code) {
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
function randomPrefix() {
    const bytes = new Uint8Array(9);
    const c = globalThis.crypto;
    if (c?.getRandomValues)
        c.getRandomValues(bytes);
    else
        for (let i = 0; i < bytes.length; i++)
            bytes[i] = Math.floor(Math.random() * 256);
    return Array.from(bytes, (b) => b.toString(36).padStart(2, "0")).join("");
}
/** `exp` of a JWT, in milliseconds, if it has one. */
export function tokenExpiry(token) {
    const part = token.split(".")[1];
    if (!part)
        return undefined;
    try {
        const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
        const json = JSON.parse(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)));
        return typeof json.exp === "number" ? json.exp * 1000 : undefined;
    }
    catch {
        return undefined;
    }
}
const encoder = new TextEncoder();
const decoder = new TextDecoder();
function utf8Length(s) {
    return encoder.encode(s).length;
}
/** A delay of `min·2^tries`, at most `max`: half fixed, half random. */
function jittered(min, max, tries) {
    const base = Math.min(max, min * 2 ** Math.min(tries, 20));
    return Math.round(base / 2 + (Math.random() * base) / 2);
}
/** One room of a client, joined across reconnects until `leave`. */
export class Room {
    name;
    /**
     * Where the application is in the room: the last seq handed to
     * `onMessage`, or the room's seq when it was joined (null before).
     */
    lastSeq = null;
    /** The room's history epoch as last joined. */
    epoch = "";
    /**
     * Users in the room as far as this client knows: the `joined` list, then
     * presence events (a user with two connections who closes one is
     * counted out until the next join).
     */
    presence = new Set();
    /** @internal */ phase = "idle";
    /** @internal */ joinSentSince = false;
    /** @internal */ joinSentPaced = false;
    /** @internal */ acceptJump = false;
    /** @internal */ replayUntil = null;
    /** @internal */ everJoined = false;
    /** @internal */ tries = 0;
    /** @internal */ retryTimer;
    /** @internal */ handlers;
    /** @internal */ waiters = [];
    #client;
    /** @internal */
    constructor(client, name, handlers) {
        this.#client = client;
        this.name = name;
        this.handlers = handlers;
    }
    /** Whether the room is joined on the current connection. */
    get joined() {
        return this.phase === "joined";
    }
    /** Publishes `data`; resolves on the server's ack, across reconnects. */
    publish(data, opts = {}) {
        return this.#client.publish(this.name, data, opts);
    }
    /** Leaves the room; its unacked publishes are rejected. */
    leave() {
        this.#client.leave(this.name);
    }
}
export class Client {
    url;
    #opts;
    #WS;
    #ws = null;
    #state = "idle";
    #token;
    #tokenStale = false;
    #redirect = null;
    #redirectStreak = 0;
    #attempt = 0;
    #openedAt = 0;
    #reconnectTimer;
    #welcomeTimer;
    #pingTimer;
    #refreshTimer;
    #retryTimer;
    #retryAt = Infinity;
    #lastFrame = 0;
    #pingSent = 0;
    #rooms = new Map();
    /**
     * Rooms waiting to send their `join`. Joins go out at once until the
     * server refuses one `rate_limited`; then one every `#joinPaceMs`, so a
     * client in many rooms that reconnects rejoins them all within the
     * server's limits instead of being closed for going over them.
     */
    #joinQueue = [];
    #joinPaceMs = 0;
    #nextJoinAt = 0;
    #joinTimer;
    /** Rooms left on this connection whose `left` has not come yet. */
    #leaving = new Map();
    #pending = new Map();
    /** Rpc calls waiting for their answer, by id. */
    #calls = new Map();
    #idPrefix;
    #nextId = 0;
    #listeners = new Map();
    #connectWaiters = [];
    /** The node of the current connection. */
    node = null;
    /** The cluster's strategy, as the node said. */
    strategy = null;
    constructor(url, opts = {}) {
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
        this.#WS = opts.WebSocket ?? globalThis.WebSocket;
        this.#token = opts.token;
        this.#idPrefix = opts.idPrefix ?? randomPrefix();
    }
    /** Where the connection is. */
    get state() {
        return this.#state;
    }
    /** Publishes waiting for their ack. */
    get unacked() {
        return this.#pending.size;
    }
    /** Subscribes to a client event; returns the way to unsubscribe. */
    on(event, fn) {
        let set = this.#listeners.get(event);
        if (!set)
            this.#listeners.set(event, (set = new Set()));
        set.add(fn);
        return () => set.delete(fn);
    }
    #emit(event, ...args) {
        for (const fn of this.#listeners.get(event) ?? []) {
            try {
                fn(...args);
            }
            catch (e) {
                console.error("turnout-client: a listener threw", e);
            }
        }
    }
    #setState(s) {
        if (this.#state === s)
            return;
        this.#state = s;
        this.#emit("state", s);
    }
    /**
     * Opens the connection; resolves once a node welcomed it. Failed
     * attempts are retried with backoff; it rejects only when the client
     * gives up (a terminal close code) or is closed.
     */
    connect() {
        if (this.#state === "open")
            return Promise.resolve();
        if (this.#state === "closed") {
            return Promise.reject(new TurnoutError("closed", "the client was closed"));
        }
        const p = new Promise((resolve, reject) => this.#connectWaiters.push({ resolve, reject }));
        if (this.#state === "idle")
            this.#open();
        return p;
    }
    /**
     * Joins `room`; resolves on the first `joined`. The room stays joined
     * across reconnects until `leave` (or `close`).
     */
    join(room, handlers = {}) {
        if (this.#state === "closed") {
            return Promise.reject(new TurnoutError("closed", "the client was closed", { room }));
        }
        if (typeof room !== "string" || !ROOM.test(room)) {
            return Promise.reject(new TurnoutError("bad_name", "a room name is 1-64 bytes of [A-Za-z0-9-_.:@] (a personal room: # and a user id)", {
                room: String(room),
            }));
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
        const r = new Room(this, room, handlers);
        this.#rooms.set(room, r);
        const p = new Promise((resolve, reject) => r.waiters.push({ resolve, reject }));
        if (this.#state === "idle")
            this.#open();
        else if (this.#isOpen())
            this.#sendJoin(r);
        return p;
    }
    /** Leaves `room`; its unacked publishes are rejected. */
    leave(room) {
        const r = this.#rooms.get(room);
        if (!r)
            return;
        this.#rooms.delete(room);
        clearTimeout(r.retryTimer);
        const err = new TurnoutError("closed", "left the room", { room });
        for (const w of r.waiters.splice(0))
            w.reject(err);
        for (const p of [...this.#pending.values()])
            if (p.room === room)
                this.#settle(p, err);
        if (this.#isOpen() && r.phase !== "idle") {
            this.#leaving.set(room, { tries: 0 });
            this.#send({ type: "leave", room });
        }
    }
    /** Publishes into a joined room; resolves on the ack, across reconnects. */
    publish(room, data, opts = {}) {
        const fail = (code, message) => Promise.reject(new TurnoutError(code, message, { room }));
        if (this.#state === "closed")
            return fail("closed", "the client was closed");
        if (!this.#rooms.has(room))
            return fail("not_joined", `join ${room} before publishing`);
        if (data === undefined)
            return fail("bad_frame", "data must be a JSON value, not undefined");
        const id = opts.id ?? `${this.#idPrefix}-${++this.#nextId}`;
        if (utf8Length(id) > MAX_ID_BYTES)
            return fail("bad_frame", `a publish id is at most ${MAX_ID_BYTES} bytes`);
        if (this.#pending.has(id))
            return fail("bad_frame", `publish id ${id} is already waiting for its ack`);
        let frame;
        try {
            frame = JSON.stringify({ type: "publish", room, data, id });
        }
        catch (e) {
            return fail("bad_frame", `data cannot be sent as JSON: ${e.message}`);
        }
        // The server closes the connection (1009) on a frame over its limit.
        if (utf8Length(frame) > this.#opts.maxFrameBytes) {
            return fail("too_large", `the publish is over ${this.#opts.maxFrameBytes} bytes (maxFrameBytes)`);
        }
        return new Promise((resolve, reject) => {
            const p = { id, room, frame, sent: false, notBefore: 0, tries: 0, resolve, reject };
            if (this.#opts.publishTimeoutMs > 0) {
                p.timer = setTimeout(() => this.#settle(p, new TurnoutError("timeout", `no ack within ${this.#opts.publishTimeoutMs} ms`, { room })), this.#opts.publishTimeoutMs);
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
    rpc(method, data = null, opts = {}) {
        const fail = (code, message) => Promise.reject(new TurnoutError(code, message));
        if (this.#state === "closed")
            return fail("closed", "the client was closed");
        if (!this.#isOpen())
            return fail("disconnected", "not connected; call rpc once connected");
        const id = `${this.#idPrefix}-r${++this.#nextId}`;
        let frame;
        try {
            frame = JSON.stringify({ type: "rpc", id, method, data });
        }
        catch (e) {
            return fail("bad_frame", `data cannot be sent as JSON: ${e.message}`);
        }
        if (utf8Length(frame) > this.#opts.maxFrameBytes) {
            return fail("too_large", `the rpc is over ${this.#opts.maxFrameBytes} bytes (maxFrameBytes)`);
        }
        return new Promise((resolve, reject) => {
            const call = { resolve, reject };
            const timeoutMs = opts.timeoutMs ?? this.#opts.publishTimeoutMs;
            if (timeoutMs > 0) {
                call.timer = setTimeout(() => this.#answer(id, new TurnoutError("timeout", `no answer within ${timeoutMs} ms`)), timeoutMs);
            }
            this.#calls.set(id, call);
            this.#send(frame);
        });
    }
    /** Settles rpc `id` with an error, or with `value`. */
    #answer(id, err, value) {
        const call = this.#calls.get(id);
        if (!call)
            return;
        this.#calls.delete(id);
        clearTimeout(call.timer);
        if (err)
            call.reject(err);
        else
            call.resolve(value);
    }
    /** Closes the connection for good; everything pending rejects with `closed`. */
    close() {
        if (this.#state === "closed")
            return;
        const ws = this.#ws;
        this.#ws = null;
        if (ws) {
            this.#detach(ws);
            try {
                ws.close(1000, "client closed");
            }
            catch {
                /* already closing */
            }
        }
        this.#giveUp(new TurnoutError("closed", "the client was closed"), false);
    }
    // ------------------------------------------------------------ connection
    #isOpen() {
        return this.#ws !== null && this.#ws.readyState === OPEN && this.node !== null;
    }
    #buildUrl(base) {
        const u = new URL(base);
        const room = this.#opts.room ?? this.#rooms.keys().next().value;
        if (this.#opts.user && !u.searchParams.has("user"))
            u.searchParams.set("user", this.#opts.user);
        if (room && !u.searchParams.has("room"))
            u.searchParams.set("room", room);
        if (this.#token)
            u.searchParams.set("token", this.#token);
        return u.toString();
    }
    #open() {
        clearTimeout(this.#reconnectTimer);
        if (!this.#WS) {
            this.#giveUp(new TurnoutError("no_websocket", "no WebSocket implementation: pass one in the options (e.g. the `ws` package), or run Node 22+ (Node 20: --experimental-websocket)"));
            return;
        }
        this.#setState(this.#state === "idle" ? "connecting" : "reconnecting");
        const target = this.#redirect ?? this.url;
        this.#redirect = null;
        let ws;
        try {
            ws = new this.#WS(this.#buildUrl(target));
        }
        catch (e) {
            const err = new TurnoutError("bad_url", `cannot open ${target}: ${e.message}`);
            if (target === this.url) {
                this.#giveUp(err);
            }
            else {
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
            if (this.#ws !== ws)
                return;
            this.#lastFrame = Date.now();
            this.#pingSent = 0;
            let f;
            try {
                f = JSON.parse(typeof ev.data === "string" ? ev.data : decoder.decode(ev.data));
            }
            catch {
                return;
            }
            if (f && typeof f === "object")
                this.#onFrame(f);
        };
        ws.onclose = (ev) => {
            if (this.#ws !== ws)
                return;
            this.#onClose(ev.code, ev.reason);
        };
        ws.onerror = () => {
            if (this.#ws !== ws)
                return;
            // A connection that never opened (refused, or its upgrade answered
            // with an error) is over: Node's WebSocket reports it with `error`
            // alone, no `close`, and waiting for one would hold the reconnect
            // until the welcome timeout. After it opened, a close follows.
            if (ws.readyState !== OPEN)
                this.#drop(1006, "connection failed");
        };
    }
    #detach(ws) {
        ws.onmessage = ws.onclose = ws.onerror = ws.onopen = null;
    }
    /** Gives up on the current socket (dead peer, redirect) and goes on as if it closed. */
    #drop(code, reason) {
        const ws = this.#ws;
        if (!ws)
            return;
        this.#detach(ws);
        try {
            ws.close(1000, reason);
        }
        catch {
            /* already closing */
        }
        this.#onClose(code, reason);
    }
    /** Stops every timer of the connection (not the token refresh). */
    #stopTimers() {
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
        for (const r of this.#rooms.values())
            clearTimeout(r.retryTimer);
        for (const l of this.#leaving.values())
            clearTimeout(l.timer);
    }
    #onClose(code, reason) {
        const node = this.node;
        const upFor = this.#openedAt ? Date.now() - this.#openedAt : 0;
        this.#openedAt = 0;
        this.#ws = null;
        this.node = null;
        this.#stopTimers();
        // The connection's memberships went with it.
        this.#leaving.clear();
        for (const r of this.#rooms.values())
            r.phase = "idle";
        for (const p of this.#pending.values())
            p.sent = false;
        // An rpc is not resent: its caller hears the connection ended.
        for (const id of [...this.#calls.keys()]) {
            this.#answer(id, new TurnoutError("disconnected", "the connection ended before the answer", { closeCode: code }));
        }
        if (this.#state === "closed")
            return;
        if (terminal(code) || (code === 3010 && !this.#opts.refreshToken)) {
            this.#emit("disconnect", { code, reason, node, retryInMs: null });
            const err = code === 3010
                ? new TurnoutError("token_expired", "the token expired and no refreshToken was given", { closeCode: code })
                : new TurnoutError("closed", `closed by the server (${code}${reason ? ": " + reason : ""})`, { closeCode: code });
            this.#giveUp(err);
            return;
        }
        if (code === 3010)
            this.#tokenStale = true;
        if (upFor >= STABLE_MS) {
            this.#attempt = 0;
            this.#redirectStreak = 0;
        }
        // A redirect is followed soon (within `minBackoffMs`, at random, so the
        // members of a room that moved do not arrive at once), but not round
        // and round. Over the server's limits (1008): the longest backoff.
        const wait = this.#redirect !== null && this.#redirectStreak <= 1
            ? Math.round(Math.random() * this.#opts.minBackoffMs)
            : code === 1008
                ? jittered(this.#opts.maxBackoffMs, this.#opts.maxBackoffMs, 0)
                : jittered(this.#opts.minBackoffMs, this.#opts.maxBackoffMs, this.#attempt++);
        this.#emit("disconnect", { code, reason, node, retryInMs: wait });
        this.#setState("reconnecting");
        this.#reconnectTimer = setTimeout(() => void this.#reopen(), wait);
    }
    /** Opens again, with a fresh token first when the last one expired. */
    async #reopen() {
        const exp = this.#token ? tokenExpiry(this.#token) : undefined;
        if (this.#opts.refreshToken && (this.#tokenStale || (exp !== undefined && exp <= Date.now()))) {
            try {
                this.#token = await this.#opts.refreshToken();
                this.#tokenStale = false;
            }
            catch (e) {
                if (this.#state === "closed")
                    return;
                // Try anyway: the refusal closes the socket and brings us back here.
                this.#emit("error", new TurnoutError("token_expired", `refreshToken failed: ${e.message}`));
            }
        }
        if (this.#state !== "closed")
            this.#open();
    }
    /** Ends everything with `err`; an `error` event unless the application closed. */
    #giveUp(err, emit = true) {
        this.#stopTimers();
        clearTimeout(this.#refreshTimer);
        this.#setState("closed");
        for (const w of this.#connectWaiters.splice(0))
            w.reject(err);
        for (const r of this.#rooms.values()) {
            for (const w of r.waiters.splice(0))
                w.reject(err);
        }
        for (const p of [...this.#pending.values()])
            this.#settle(p, err);
        for (const id of [...this.#calls.keys()])
            this.#answer(id, err);
        if (emit)
            this.#emit("error", err);
    }
    #send(f) {
        try {
            this.#ws?.send(typeof f === "string" ? f : JSON.stringify(f));
        }
        catch {
            /* the close that follows handles it */
        }
    }
    #startPing() {
        clearInterval(this.#pingTimer);
        const every = this.#opts.pingIntervalMs;
        const patience = this.#opts.pongTimeoutMs;
        if (every <= 0 || patience <= 0)
            return;
        this.#lastFrame = Date.now();
        this.#pingTimer = setInterval(() => {
            const now = Date.now();
            if (this.#pingSent && now - this.#pingSent > patience) {
                this.#drop(1006, "no answer to ping");
            }
            else if (!this.#pingSent && now - this.#lastFrame >= every) {
                this.#pingSent = now;
                this.#send({ type: "ping" });
            }
        }, Math.max(50, Math.min(every, patience) / 2));
    }
    #scheduleRefresh() {
        clearTimeout(this.#refreshTimer);
        if (!this.#opts.refreshToken || !this.#token || this.#state === "closed")
            return;
        const exp = tokenExpiry(this.#token);
        if (exp === undefined)
            return;
        const left = exp - Date.now();
        // `refreshBeforeMs` ahead, but not in a loop when tokens live shorter.
        const wait = Math.max(1_000, Math.min(left - this.#opts.refreshBeforeMs, left / 2));
        this.#refreshTimer = setTimeout(async () => {
            let token;
            try {
                token = await this.#opts.refreshToken();
            }
            catch (e) {
                if (this.#state === "closed")
                    return;
                this.#emit("error", new TurnoutError("unauthorized", `refreshToken failed: ${e.message}`));
                return;
            }
            if (this.#state === "closed")
                return;
            this.#token = token;
            if (this.#isOpen())
                this.#send({ type: "refresh", token });
            else
                this.#scheduleRefresh();
        }, Math.min(wait, 2 ** 31 - 1));
    }
    // ------------------------------------------------------------ frames
    #onFrame(f) {
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
    #onWelcome(f) {
        clearTimeout(this.#welcomeTimer);
        this.node = String(f.node);
        this.strategy = String(f.strategy);
        this.#openedAt = Date.now();
        this.#setState("open");
        this.#startPing();
        this.#scheduleRefresh();
        this.#emit("welcome", { node: this.node, strategy: this.strategy, conn: String(f.conn ?? ""), data: f.data });
        for (const w of this.#connectWaiters.splice(0))
            w.resolve();
        for (const r of this.#rooms.values())
            this.#sendJoin(r);
    }
    /** Queues the room's `join`: sent at once, or at the join pace. */
    #sendJoin(r) {
        r.phase = "joining";
        if (!this.#joinQueue.includes(r))
            this.#joinQueue.push(r);
        this.#pumpJoins();
    }
    /** Sends queued joins, at the pace when there is one. */
    #pumpJoins() {
        clearTimeout(this.#joinTimer);
        this.#joinTimer = undefined;
        while (this.#joinQueue.length > 0 && this.#isOpen()) {
            const now = Date.now();
            if (this.#joinPaceMs > 0 && now < this.#nextJoinAt) {
                this.#joinTimer = setTimeout(() => this.#pumpJoins(), this.#nextJoinAt - now);
                return;
            }
            const r = this.#joinQueue.shift();
            // Left meanwhile, or its join went another way.
            if (this.#rooms.get(r.name) !== r || r.phase !== "joining")
                continue;
            this.#joinNow(r);
            if (this.#joinPaceMs > 0)
                this.#nextJoinAt = now + this.#joinPaceMs;
        }
    }
    /**
     * The server refused a join `rate_limited`: slow down (more, if it was
     * sent at the pace already), and try it again in turn.
     */
    #joinRefused(r) {
        if (r.joinSentPaced)
            this.#joinPaceMs = Math.min(this.#opts.maxBackoffMs, this.#joinPaceMs * 2);
        else if (this.#joinPaceMs === 0)
            this.#joinPaceMs = JOIN_PACE_MS;
        this.#nextJoinAt = Date.now() + this.#joinPaceMs;
        this.#sendJoin(r);
    }
    #joinNow(r) {
        const f = { type: "join", room: r.name };
        if (r.lastSeq !== null) {
            f.since = r.lastSeq;
            if (r.epoch)
                f.epoch = r.epoch;
        }
        r.phase = "joining";
        r.joinSentSince = r.lastSeq !== null;
        r.joinSentPaced = this.#joinPaceMs > 0;
        this.#send(f);
    }
    /** Leaves and joins again with `since`: the replay fills the hole. */
    #rejoin(r, reason) {
        if (r.phase !== "joined")
            return; // a join or rejoin is under way
        this.#emit("rejoin", { room: r.name, since: r.lastSeq, reason });
        r.phase = "leaving";
        this.#send({ type: "leave", room: r.name });
    }
    /** Runs `fn` for the room after a backoff, if the room is still where it was. */
    #later(r, phase, fn) {
        clearTimeout(r.retryTimer);
        r.retryTimer = setTimeout(() => {
            if (this.#rooms.get(r.name) === r && r.phase === phase && this.#isOpen())
                fn();
        }, jittered(this.#opts.minBackoffMs, this.#opts.maxBackoffMs, r.tries++));
    }
    #onLeft(f) {
        const room = String(f.room);
        const r = this.#rooms.get(room);
        if (r && r.phase === "leaving") {
            this.#sendJoin(r);
            return;
        }
        this.#leaving.delete(room);
    }
    #onJoined(f) {
        const r = this.#rooms.get(f.room);
        if (!r)
            return;
        // A join answered, or the node starting the room over (Redis lost its
        // state) while it is joined; anything else answers nothing we wait for.
        if (r.phase !== "joining" && r.phase !== "joined")
            return;
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
        }
        else {
            const epochChanged = r.epoch !== "" && epoch !== r.epoch;
            if (epochChanged || since > seq) {
                // The room started over: what comes next counts from its seq.
                r.lastSeq = seq;
            }
            else if (f.recovered === false) {
                // History lost some: what it still holds comes next, after a hole.
                r.acceptJump = true;
            }
        }
        r.epoch = epoch;
        r.phase = "joined";
        r.everJoined = true;
        r.tries = 0;
        // Every join went through at the pace: full speed again.
        if (this.#joinQueue.length === 0)
            this.#joinPaceMs = 0;
        r.replayUntil = typeof f.replay_until === "number" ? f.replay_until : null;
        r.presence.clear();
        for (const u of f.presence ?? [])
            r.presence.add(String(u));
        const info = { room: r.name, seq, epoch, presence: [...r.presence], first };
        if (since !== null)
            info.recovered = f.recovered !== false;
        call(() => r.handlers.onJoined?.(info));
        for (const w of r.waiters.splice(0))
            w.resolve(r);
        this.#flush(r.name);
    }
    #onMessage(f) {
        const r = this.#rooms.get(f.room);
        // Not joined here (yet): the join's replay brings what matters.
        if (!r || r.phase !== "joined")
            return;
        const seq = Number(f.seq);
        if (r.lastSeq !== null && seq <= r.lastSeq)
            return; // had it
        if (r.lastSeq !== null && seq > r.lastSeq + 1 && !r.acceptJump) {
            // A hole: ask history for it (messages past it come again after).
            this.#rejoin(r, "gap");
            return;
        }
        r.acceptJump = false;
        r.lastSeq = seq;
        // Joined before the room had an epoch: its first message names it, and
        // a rejoin must say which epoch `since` counts in.
        if (r.epoch === "" && typeof f.epoch === "string")
            r.epoch = f.epoch;
        const m = { room: r.name, seq, from: f.from, node: f.node, ts: f.ts, data: f.data };
        call(() => r.handlers.onMessage?.(m));
        if (r.replayUntil !== null && seq >= r.replayUntil) {
            // The replay was cut at max_replay_bytes: ask for the rest.
            r.replayUntil = null;
            this.#rejoin(r, "replay_cut");
        }
    }
    #onPresence(f) {
        const r = this.#rooms.get(f.room);
        if (!r)
            return;
        const user = String(f.user);
        if (f.event === "join")
            r.presence.add(user);
        else
            r.presence.delete(user);
        const e = { room: r.name, event: f.event === "join" ? "join" : "leave", user, users: [...r.presence] };
        call(() => r.handlers.onPresence?.(e));
    }
    #onAck(f) {
        const p = typeof f.id === "string" ? this.#pending.get(f.id) : undefined;
        if (!p)
            return;
        this.#settle(p, undefined, { seq: Number(f.seq), duplicate: f.duplicate === true });
    }
    #onError(f) {
        const code = String(f.code ?? "internal");
        const err = new TurnoutError(code, String(f.message ?? code), { room: f.room });
        if (typeof f.id === "string" && this.#calls.has(f.id))
            return this.#answer(f.id, err);
        const p = typeof f.id === "string" ? this.#pending.get(f.id) : undefined;
        const tracked = typeof f.room === "string" && this.#rooms.has(f.room);
        if (code === "wrong_node" && (tracked || p)) {
            // Sticky: the room lives elsewhere. Move there (or, without a
            // redirect, ask the gateway again) and rejoin everything. (A room
            // the server joined us to that we do not follow is no reason to.)
            const url = typeof f.redirect === "string" ? f.redirect : null;
            if (url)
                this.#emit("redirect", { room: String(f.room ?? ""), url });
            if (this.#openedAt && Date.now() - this.#openedAt >= STABLE_MS)
                this.#redirectStreak = 0;
            this.#redirectStreak += 1;
            this.#redirect = url;
            if (p)
                p.sent = false;
            this.#drop(4000, "moving to the room's owner");
            return;
        }
        if (code === "draining") {
            this.#redirect = null;
            this.#drop(1012, "node draining");
            return;
        }
        if (p)
            return this.#publishRefused(p, code, err);
        const room = typeof f.room === "string" ? f.room : undefined;
        const r = room !== undefined ? this.#rooms.get(room) : this.#oldestJoin(code);
        if (r) {
            if (r.phase === "leaving") {
                // The leave of a rejoin.
                if (code === "not_joined")
                    this.#sendJoin(r);
                else if (RETRY.has(code))
                    this.#later(r, "leaving", () => this.#send({ type: "leave", room: r.name }));
                else
                    this.#emit("error", err);
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
                for (const w of r.waiters.splice(0))
                    w.reject(err);
                for (const q of [...this.#pending.values()])
                    if (q.room === r.name)
                        this.#settle(q, err);
                if (!r.everJoined)
                    return; // the join's promise says it
            }
            this.#emit("error", err);
            return;
        }
        if (room !== undefined && this.#leaving.has(room)) {
            // The leave of a room the application left.
            const l = this.#leaving.get(room);
            if (RETRY.has(code)) {
                l.timer = setTimeout(() => {
                    if (this.#leaving.get(room) === l && this.#isOpen())
                        this.#send({ type: "leave", room });
                }, jittered(this.#opts.minBackoffMs, this.#opts.maxBackoffMs, l.tries++));
            }
            else {
                this.#leaving.delete(room);
            }
            return;
        }
        if (code === "not_joined")
            return; // a leave of a room this connection had not joined
        this.#emit("error", err);
    }
    /** A refusal without a room (`too_many_rooms`) answers the oldest join under way. */
    #oldestJoin(code) {
        if (code !== "too_many_rooms" && code !== "bad_name")
            return undefined;
        for (const r of this.#rooms.values())
            if (r.phase === "joining")
                return r;
        return undefined;
    }
    #publishRefused(p, code, err) {
        if (RETRY.has(code)) {
            p.sent = false;
            p.tries += 1;
            p.notBefore = Date.now() + jittered(this.#opts.minBackoffMs, this.#opts.maxBackoffMs, p.tries);
            this.#scheduleFlush();
        }
        else if (WAIT_PUBLISH.has(code)) {
            p.sent = false;
            const r = this.#rooms.get(p.room);
            // The node does not have us in the room: join it again; the
            // publish goes after.
            if (code === "not_joined" && r)
                this.#rejoin(r, "not_joined");
        }
        else {
            this.#settle(p, err);
        }
    }
    // ------------------------------------------------------------ publishes
    #settle(p, err, result) {
        if (this.#pending.get(p.id) !== p)
            return;
        this.#pending.delete(p.id);
        clearTimeout(p.timer);
        if (err)
            p.reject(err);
        else
            p.resolve(result);
    }
    /** Sends the room's unsent publishes, oldest first, once it is joined. */
    #flush(room) {
        const r = this.#rooms.get(room);
        if (!r || r.phase !== "joined" || !this.#isOpen())
            return;
        const now = Date.now();
        for (const p of this.#pending.values()) {
            if (p.room !== room || p.sent)
                continue;
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
    #scheduleFlush() {
        const now = Date.now();
        let soonest = Infinity;
        // A room's publishes go in order, so its first unsent one says when it
        // can go on (at once, if its delay passed meanwhile). Rooms not joined
        // flush at their `joined`.
        const seen = new Set();
        for (const p of this.#pending.values()) {
            if (p.sent || seen.has(p.room))
                continue;
            seen.add(p.room);
            if (this.#rooms.get(p.room)?.phase === "joined") {
                soonest = Math.min(soonest, Math.max(p.notBefore, now));
            }
        }
        if (soonest === Infinity || soonest >= this.#retryAt)
            return;
        clearTimeout(this.#retryTimer);
        this.#retryAt = soonest;
        this.#retryTimer = setTimeout(() => {
            this.#retryTimer = undefined;
            this.#retryAt = Infinity;
            for (const room of this.#rooms.keys())
                this.#flush(room);
        }, soonest - now);
    }
}
function call(fn) {
    try {
        fn();
    }
    catch (e) {
        console.error("turnout-client: a handler threw", e);
    }
}
