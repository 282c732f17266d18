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
    /** An error code of docs/PROTOCOL.md, or `closed`, `timeout`, `no_websocket`. */
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
// Close codes after which reconnecting as is would fail the same way: a
// protocol error, bad data, a policy breach, a frame too big, and the
// "do not reconnect as is" range. 3010 (token expired) reconnects when a
// fresh token can be had.
function terminal(code) {
    return [1002, 1003, 1007, 1008, 1009, 1010].includes(code) || (code >= 3500 && code <= 3999);
}
// Refusals of a publish that a resend can cure.
const RETRY_PUBLISH = new Set(["rate_limited", "unavailable", "internal"]);
// Refusals meaning "not here, not now": the publish waits for the next join.
const WAIT_PUBLISH = new Set(["not_joined", "wrong_node", "draining"]);
// Refusals of a join that a later try can cure, and those it cannot.
const RETRY_JOIN = new Set(["rate_limited", "unavailable", "internal"]);
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
function utf8Length(s) {
    return new TextEncoder().encode(s).length;
}
/** One joined room of a client. */
export class Room {
    name;
    /** The last seq handed to `onMessage` (null before the first). */
    lastSeq = null;
    /** The room's history epoch as last joined. */
    epoch = "";
    /** Users in the room, as far as this client knows. */
    presence = new Set();
    /** @internal */ joined = false;
    /** @internal */ rejoining = false;
    /** @internal */ acceptJump = false;
    /** @internal */ replayUntil = null;
    /** @internal */ everJoined = false;
    /** @internal */ left = false;
    /** @internal */ handlers;
    /** @internal */ waiters = [];
    /** @internal */ joinTries = 0;
    #client;
    /** @internal */
    constructor(client, name, handlers) {
        this.#client = client;
        this.name = name;
        this.handlers = handlers;
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
    #redirect = null;
    #attempt = 0;
    #reconnectTimer;
    #pingTimer;
    #refreshTimer;
    #retryTimer;
    #lastFrame = 0;
    #pingSent = 0;
    #rooms = new Map();
    #pending = new Map();
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
            publishTimeoutMs: 60_000,
            refreshBeforeMs: 30_000,
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
        const existing = this.#rooms.get(room);
        if (existing) {
            return existing.everJoined ? Promise.resolve(existing) : new Promise((resolve, reject) => existing.waiters.push({ resolve, reject }));
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
        r.left = true;
        this.#rooms.delete(room);
        for (const w of r.waiters)
            w.reject(new TurnoutError("closed", "left before joined", { room }));
        r.waiters = [];
        for (const p of [...this.#pending.values()]) {
            if (p.room === room)
                this.#settle(p, new TurnoutError("closed", "left the room", { room }));
        }
        if (this.#isOpen())
            this.#send({ type: "leave", room });
    }
    /** Publishes into a joined room; resolves on the ack, across reconnects. */
    publish(room, data, opts = {}) {
        if (!this.#rooms.has(room)) {
            return Promise.reject(new TurnoutError("not_joined", `join ${room} before publishing`, { room }));
        }
        const id = opts.id ?? `${this.#idPrefix}-${++this.#nextId}`;
        if (utf8Length(id) > MAX_ID_BYTES) {
            return Promise.reject(new TurnoutError("bad_frame", `a publish id is at most ${MAX_ID_BYTES} bytes`, { room }));
        }
        if (this.#pending.has(id)) {
            return Promise.reject(new TurnoutError("bad_frame", `publish id ${id} is already waiting for its ack`, { room }));
        }
        return new Promise((resolve, reject) => {
            const p = { id, room, data, sent: false, notBefore: 0, tries: 0, resolve, reject };
            if (this.#opts.publishTimeoutMs > 0) {
                p.timer = setTimeout(() => this.#settle(p, new TurnoutError("timeout", `no ack within ${this.#opts.publishTimeoutMs} ms`, { room })), this.#opts.publishTimeoutMs);
            }
            this.#pending.set(id, p);
            this.#flush(room);
        });
    }
    /** Closes the connection for good; unacked publishes are rejected. */
    close() {
        if (this.#state === "closed")
            return;
        this.#stopTimers();
        clearTimeout(this.#refreshTimer);
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
    /** Publishes waiting for their ack. */
    get unacked() {
        return this.#pending.size;
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
        this.#setState(this.#attempt === 0 && this.node === null && this.#state === "idle" ? "connecting" : "reconnecting");
        const target = this.#redirect ?? this.url;
        this.#redirect = null;
        let ws;
        try {
            ws = new this.#WS(this.#buildUrl(target));
        }
        catch (e) {
            this.#giveUp(new TurnoutError("bad_url", `cannot open ${target}: ${e.message}`));
            return;
        }
        this.#ws = ws;
        this.node = null;
        ws.onmessage = (ev) => {
            if (this.#ws !== ws)
                return;
            this.#lastFrame = Date.now();
            this.#pingSent = 0;
            let f;
            try {
                f = JSON.parse(typeof ev.data === "string" ? ev.data : new TextDecoder().decode(ev.data));
            }
            catch {
                return;
            }
            this.#onFrame(f);
        };
        ws.onclose = (ev) => {
            if (this.#ws !== ws)
                return;
            this.#onClose(ev.code, ev.reason);
        };
        ws.onerror = () => {
            /* a close follows */
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
    #stopTimers() {
        clearTimeout(this.#reconnectTimer);
        clearInterval(this.#pingTimer);
        clearTimeout(this.#retryTimer);
        this.#pingTimer = undefined;
    }
    #onClose(code, reason) {
        const node = this.node;
        this.#ws = null;
        this.node = null;
        this.#stopTimers();
        for (const r of this.#rooms.values()) {
            r.joined = false;
            r.rejoining = false;
        }
        for (const p of this.#pending.values())
            p.sent = false;
        if (this.#state === "closed")
            return;
        if (code === 3010 && !this.#opts.refreshToken) {
            this.#emit("disconnect", { code, reason, node, retryInMs: null });
            this.#giveUp(new TurnoutError("token_expired", "the token expired and no refreshToken was given", { closeCode: code }));
            return;
        }
        if (terminal(code)) {
            this.#emit("disconnect", { code, reason, node, retryInMs: null });
            this.#giveUp(new TurnoutError("closed", `closed by the server (${code}${reason ? ": " + reason : ""})`, { closeCode: code }));
            return;
        }
        const wait = this.#redirect !== null ? 0 : this.#backoff();
        this.#emit("disconnect", { code, reason, node, retryInMs: wait });
        this.#setState("reconnecting");
        this.#reconnectTimer = setTimeout(async () => {
            if (code === 3010) {
                try {
                    this.#token = await this.#opts.refreshToken();
                }
                catch (e) {
                    this.#giveUp(new TurnoutError("token_expired", `refreshToken failed: ${e.message}`, { closeCode: code }));
                    return;
                }
            }
            if (this.#state !== "closed")
                this.#open();
        }, wait);
    }
    /** Exponential backoff with jitter: half fixed, half random. */
    #backoff() {
        const base = Math.min(this.#opts.maxBackoffMs, this.#opts.minBackoffMs * 2 ** Math.min(this.#attempt, 20));
        this.#attempt += 1;
        return Math.round(base / 2 + (Math.random() * base) / 2);
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
        if (emit)
            this.#emit("error", err);
    }
    #send(f) {
        try {
            this.#ws?.send(JSON.stringify(f));
        }
        catch {
            /* the close that follows handles it */
        }
    }
    #startPing() {
        clearInterval(this.#pingTimer);
        const every = this.#opts.pingIntervalMs;
        if (every <= 0)
            return;
        this.#lastFrame = Date.now();
        this.#pingTimer = setInterval(() => {
            const now = Date.now();
            if (this.#pingSent && now - this.#pingSent > this.#opts.pongTimeoutMs) {
                this.#drop(1006, "no answer to ping");
            }
            else if (!this.#pingSent && now - this.#lastFrame >= every) {
                this.#pingSent = now;
                this.#send({ type: "ping" });
            }
        }, Math.max(50, Math.min(every, this.#opts.pongTimeoutMs) / 2));
    }
    #scheduleRefresh() {
        clearTimeout(this.#refreshTimer);
        if (!this.#opts.refreshToken || !this.#token)
            return;
        const exp = tokenExpiry(this.#token);
        if (exp === undefined)
            return;
        const wait = Math.max(0, exp - Date.now() - this.#opts.refreshBeforeMs);
        this.#refreshTimer = setTimeout(async () => {
            try {
                this.#token = await this.#opts.refreshToken();
            }
            catch (e) {
                this.#emit("error", new TurnoutError("unauthorized", `refreshToken failed: ${e.message}`));
                return;
            }
            if (this.#isOpen())
                this.#send({ type: "refresh", token: this.#token });
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
            default:
                return; // pong, left, and frames of later versions
        }
    }
    #onWelcome(f) {
        this.node = String(f.node);
        this.strategy = String(f.strategy);
        if (this.#rooms.size === 0)
            this.#attempt = 0;
        this.#setState("open");
        this.#startPing();
        this.#scheduleRefresh();
        this.#emit("welcome", { node: this.node, strategy: this.strategy, conn: String(f.conn ?? "") });
        for (const w of this.#connectWaiters.splice(0))
            w.resolve();
        for (const r of this.#rooms.values())
            this.#sendJoin(r);
    }
    #sendJoin(r) {
        const f = { type: "join", room: r.name };
        if (r.lastSeq !== null) {
            f.since = r.lastSeq;
            if (r.epoch)
                f.epoch = r.epoch;
        }
        this.#send(f);
    }
    #rejoin(r, reason) {
        if (r.rejoining || r.lastSeq === null)
            return;
        r.rejoining = true;
        r.joined = false;
        this.#emit("rejoin", { room: r.name, since: r.lastSeq, reason });
        this.#send({ type: "leave", room: r.name });
        this.#sendJoin(r);
    }
    #onJoined(f) {
        const r = this.#rooms.get(f.room);
        if (!r)
            return;
        const seq = Number(f.seq);
        const epoch = String(f.epoch ?? "");
        const first = !r.everJoined;
        const since = r.lastSeq;
        if (since === null) {
            r.lastSeq = seq;
        }
        else {
            const epochChanged = r.epoch !== "" && epoch !== r.epoch;
            if (epochChanged || since > seq) {
                // The room started over: nothing of before can come.
                r.lastSeq = seq;
            }
            else if (f.recovered === false) {
                // History lost some: what it still holds comes next, after a hole.
                r.acceptJump = true;
            }
        }
        r.epoch = epoch;
        r.joined = true;
        r.rejoining = false;
        r.everJoined = true;
        r.joinTries = 0;
        r.replayUntil = typeof f.replay_until === "number" ? f.replay_until : null;
        r.presence.clear();
        for (const u of f.presence ?? [])
            r.presence.add(String(u));
        this.#attempt = 0;
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
        if (!r)
            return;
        const seq = Number(f.seq);
        if (r.lastSeq !== null && seq <= r.lastSeq)
            return; // had it
        if (r.lastSeq !== null && seq > r.lastSeq + 1 && !r.acceptJump) {
            // A hole: ask history for it (messages past it come again after).
            this.#rejoin(r, "gap");
            return;
        }
        if (r.rejoining)
            return; // the rejoin's replay brings it
        r.acceptJump = false;
        r.lastSeq = seq;
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
        if (code === "wrong_node") {
            // Sticky: the room lives elsewhere. Move there (or, without a
            // redirect, ask the gateway again) and rejoin everything.
            const url = typeof f.redirect === "string" ? f.redirect : null;
            if (url)
                this.#emit("redirect", { room: String(f.room ?? ""), url });
            this.#redirect = url;
            const p = typeof f.id === "string" ? this.#pending.get(f.id) : undefined;
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
        const p = typeof f.id === "string" ? this.#pending.get(f.id) : undefined;
        if (p) {
            if (RETRY_PUBLISH.has(code)) {
                p.sent = false;
                p.tries += 1;
                p.notBefore = Date.now() + Math.min(this.#opts.maxBackoffMs, this.#opts.minBackoffMs * 2 ** Math.min(p.tries, 20));
                this.#scheduleFlush();
            }
            else if (WAIT_PUBLISH.has(code)) {
                p.sent = false; // sent again after the room's next joined
            }
            else {
                this.#settle(p, err);
            }
            return;
        }
        const r = typeof f.room === "string" ? this.#rooms.get(f.room) : undefined;
        if (r) {
            if (code === "not_joined")
                return; // the leave of a rejoin, of a room not joined
            if (!r.joined && RETRY_JOIN.has(code)) {
                r.rejoining = false;
                r.joinTries += 1;
                const wait = Math.min(this.#opts.maxBackoffMs, this.#opts.minBackoffMs * 2 ** Math.min(r.joinTries, 20));
                setTimeout(() => {
                    if (this.#rooms.get(r.name) === r && !r.joined && this.#isOpen())
                        this.#sendJoin(r);
                }, wait);
                return;
            }
            // A refused leave of a rejoin: the hole shows again and asks again.
            if (code === "rate_limited")
                return;
            if (JOIN_REFUSED.has(code)) {
                this.#rooms.delete(r.name);
                for (const w of r.waiters.splice(0))
                    w.reject(err);
                for (const q of [...this.#pending.values()])
                    if (q.room === r.name)
                        this.#settle(q, err);
                if (!r.everJoined)
                    return; // the join's promise says it
            }
        }
        this.#emit("error", err);
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
        if (!r || !r.joined || r.rejoining || !this.#isOpen())
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
            this.#send({ type: "publish", room, data: p.data, id: p.id });
        }
    }
    #scheduleFlush() {
        if (this.#retryTimer !== undefined)
            return;
        let soonest = Infinity;
        for (const p of this.#pending.values())
            if (!p.sent)
                soonest = Math.min(soonest, p.notBefore);
        if (soonest === Infinity)
            return;
        this.#retryTimer = setTimeout(() => {
            this.#retryTimer = undefined;
            for (const room of this.#rooms.keys())
                this.#flush(room);
        }, Math.max(0, soonest - Date.now()));
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
