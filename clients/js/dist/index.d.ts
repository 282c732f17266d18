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
    onmessage: ((ev: {
        data: unknown;
    }) => void) | null;
    onclose: ((ev: {
        code: number;
        reason: string;
    }) => void) | null;
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
export declare class TurnoutError extends Error {
    /** An error code of docs/PROTOCOL.md, or `closed`, `timeout`, `too_large`, `token_expired`, `no_websocket`, `bad_url`. */
    readonly code: string;
    readonly room?: string;
    /** The close code, when the connection ended. */
    readonly closeCode?: number;
    constructor(code: string, message: string, extra?: {
        room?: string;
        closeCode?: number;
    });
}
export interface ClientEvents {
    /** The connection's state changed. */
    state: (state: ConnectionState) => void;
    /** A connection opened (on `node`). */
    welcome: (w: {
        node: string;
        strategy: string;
        conn: string;
        data?: unknown;
    }) => void;
    /** A room lives on another node (sticky): the client moves there. */
    redirect: (r: {
        room: string;
        url: string;
    }) => void;
    /** The node asked its clients to reconnect (`draining`, `lease_lost`). */
    reconnect: (r: {
        reason: string;
    }) => void;
    /**
     * The connection to `node` (null: it never got a welcome) ended;
     * `retryInMs` is null when the client gives up. Code 4000: the client
     * left a node that does not own a room (`wrong_node`).
     */
    disconnect: (d: {
        code: number;
        reason: string;
        node: string | null;
        retryInMs: number | null;
    }) => void;
    /** A room is rejoined (left and joined again with `since`) to fill a hole. */
    rejoin: (r: {
        room: string;
        since: number | null;
        reason: RejoinReason;
    }) => void;
    /** A refusal not tied to one `publish` or `join`. */
    error: (e: TurnoutError) => void;
}
/** `exp` of a JWT, in milliseconds, if it has one. */
export declare function tokenExpiry(token: string): number | undefined;
/** One room of a client, joined across reconnects until `leave`. */
export declare class Room<T = unknown> {
    #private;
    readonly name: string;
    /**
     * Where the application is in the room: the last seq handed to
     * `onMessage`, or the room's seq when it was joined (null before).
     */
    lastSeq: number | null;
    /** The room's history epoch as last joined. */
    epoch: string;
    /**
     * Users in the room as far as this client knows: the `joined` list, then
     * presence events (a user with two connections who closes one is
     * counted out until the next join).
     */
    readonly presence: Set<string>;
    /** Whether the room is joined on the current connection. */
    get joined(): boolean;
    /** Publishes `data`; resolves on the server's ack, across reconnects. */
    publish(data: T | unknown, opts?: PublishOptions): Promise<PublishResult>;
    /** Leaves the room; its unacked publishes are rejected. */
    leave(): void;
}
export declare class Client {
    #private;
    readonly url: string;
    /** The node of the current connection. */
    node: string | null;
    /** The cluster's strategy, as the node said. */
    strategy: string | null;
    constructor(url: string, opts?: ClientOptions);
    /** Where the connection is. */
    get state(): ConnectionState;
    /** Publishes waiting for their ack. */
    get unacked(): number;
    /** Subscribes to a client event; returns the way to unsubscribe. */
    on<E extends keyof ClientEvents>(event: E, fn: ClientEvents[E]): () => void;
    /**
     * Opens the connection; resolves once a node welcomed it. Failed
     * attempts are retried with backoff; it rejects only when the client
     * gives up (a terminal close code) or is closed.
     */
    connect(): Promise<void>;
    /**
     * Joins `room`; resolves on the first `joined`. The room stays joined
     * across reconnects until `leave` (or `close`).
     */
    join<T = unknown>(room: string, handlers?: RoomHandlers<T>): Promise<Room<T>>;
    /** Leaves `room`; its unacked publishes are rejected. */
    leave(room: string): void;
    /** Publishes into a joined room; resolves on the ack, across reconnects. */
    publish(room: string, data: unknown, opts?: PublishOptions): Promise<PublishResult>;
    /**
     * Asks the backend's rpc hook (`method`, `data`) over this connection;
     * resolves with its answer, rejects with its refusal (`rejected`),
     * `unavailable` (the backend did not answer: the call may be made
     * again), `disconnected` (the connection ended first: whether the backend
     * saw it is unknown) or `timeout`. Not resent by itself.
     */
    rpc(method: string, data?: unknown, opts?: {
        timeoutMs?: number;
    }): Promise<unknown>;
    /** Closes the connection for good; everything pending rejects with `closed`. */
    close(): void;
}
