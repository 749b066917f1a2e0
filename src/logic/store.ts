import { create, toBinary } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  ContactInfoSchema,
  InboxEventSchema,
  PushMessageSchema,
  SessionInfoSchema,
  SessionMetaSchema,
  type ContactInfo,
  type InboxEvent,
  type PushMessage,
  type SessionInfo,
} from "../gen/resonance/gateway/v1/gateway_pb.js";
import { PushEventSchema } from "../gen/resonance/mq/v1/mq_pb.js";
import type { Queryable, Storage } from "../infra/storage/types.js";

export const PUBLIC_ROOM = "0";
export const SESSION_SINGLE = 1;
export const SESSION_GROUP = 2;

interface MessageRow {
  id: string;
  session_id: string;
  seq_id: string;
  sender: string;
  to_username: string;
  content: string;
  type: string;
  created_at: string;
}

export interface UserRow {
  username: string;
  nickname: string;
  avatar_url: string;
  password_hash: string;
  /** Tokens issued before this (ms since epoch, int8 as a string) are refused. */
  tokens_valid_after: string;
}

const USER_COLUMNS = "username, nickname, avatar_url, password_hash, tokens_valid_after";

export interface NewMessage {
  sessionId: string;
  from: string;
  to: string;
  content: string;
  type: string;
  clientMsgId: string | undefined;
}

export interface Committed {
  msgId: bigint;
  seqId: bigint;
  sessionId: string;
  /** False when this was a resend of an already committed client message id. */
  created: boolean;
}

const MSG_COLUMNS = "m.id, m.session_id, m.seq_id, m.sender, m.to_username, m.content, m.type, m.created_at";

function toPush(r: MessageRow, meta?: { name: string; type: number }): PushMessage {
  return create(PushMessageSchema, {
    msgId: BigInt(r.id),
    seqId: BigInt(r.seq_id),
    sessionId: r.session_id,
    fromUsername: r.sender,
    toUsername: r.to_username,
    content: r.content,
    type: r.type,
    timestamp: BigInt(r.created_at),
    ...(meta && r.type === "system" ? { sessionMeta: create(SessionMetaSchema, meta) } : {}),
  });
}

/**
 * One message commit in one statement ($1 session, $2 sender, $3 to, $4 content, $5 type,
 * $6 client_msg_id, $7 created_at): the seq is taken only if the
 * sender is a member (the session row stays locked until the statement commits: commit order =
 * seq order), then the message and its outbox row. Any error — such as the unique key on
 * (sender, client_msg_id) — undoes all three. Returns no row when nothing was written.
 */
const INSERT_MESSAGE = `
  with s as (
    update sessions set max_seq_id = max_seq_id + 1
     where id = $1 and exists (select 1 from session_members where session_id = $1 and username = $2)
    returning max_seq_id, name, type
  ), m as (
    insert into messages (session_id, seq_id, sender, to_username, content, type, client_msg_id, created_at)
    select $1, s.max_seq_id, $2, $3, $4, $5, $6, $7 from s
    returning id, seq_id
  ), o as (
    insert into outbox (msg_id) select id from m
  )
  select id, seq_id from m`;

/** A message's outcome in a batch: its ids, or the error it is answered with alone. */
export type CommitOutcome = Committed | ConnectError;

/** A new message's queue event, ready for the relay's fast path. */
export interface CommittedEvent {
  readonly outboxId: string;
  readonly msgId: string;
  /** The PushEvent, encoded. */
  readonly data: Uint8Array;
}

export interface BatchResult {
  readonly outcomes: CommitOutcome[];
  readonly events: CommittedEvent[];
}

interface BatchRow {
  ord: string;
  id: string | null;
  seq_id: string | null;
  outbox_id: string | null;
  name: string | null;
  stype: number | null;
  large: boolean | null;
  prior_id: string | null;
  prior_seq: string | null;
  same: boolean | null;
}

/**
 * A group commit: many messages of many sessions in one statement (one implicit transaction,
 * one WAL flush). Parameters are parallel arrays ($1 session, $2 sender, $3 to, $4 content,
 * $5 type, $6 client_msg_id) unnested `with ordinality`, so every result row carries its input's
 * position; $7 created_at, $8 claim ms and $9 owner of the new outbox rows; $10 the fan-out
 * limit (a session with more members is large: its event says so, decided once, at commit).
 *
 * - prior: a resend, found by (sender, session, client_msg_id), keeps its original ids and writes
 *   nothing (same = the content matches too);
 * - fresh: the rest whose sender is a member, numbered per session in input order;
 * - locked: their session rows, locked in id order, so two committers never deadlock;
 * - s: each session's seq range taken with one update (base + row number: gap-free, commit order
 *   = seq order, the rows stay locked until commit);
 * - m, o: the messages and their outbox rows (claimed for the fast path).
 *
 * A concurrent commit of the same client id raises a unique violation that undoes everything
 * (the retry finds it as prior).
 */
const COMMIT_BATCH = `
  with i as materialized (
    select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
      with ordinality as t(session_id, sender, to_username, content, type, client_msg_id, ord)
  ), prior as materialized (
    -- Index probes per row (the LIMIT keeps each lateral a probe: joined as a whole, the planner
    -- chose hash joins over a sequential scan of every message and membership while the tables'
    -- statistics lagged their growth).
    select i.ord, m.id, m.seq_id, (m.content = i.content and m.type = i.type and m.to_username = i.to_username) as same
      from i cross join lateral (
        select x.id, x.seq_id, x.content, x.type, x.to_username from messages x
         where x.sender = i.sender and x.session_id = i.session_id and x.client_msg_id = i.client_msg_id limit 1
      ) m
  ), fresh as materialized (
    -- Ids are drawn here, so the answer needs no join back to the inserted rows (with one-row
    -- estimates for CTEs the planner joined them by nested loops: a third of the statement).
    -- Drawn in (session, position) order: within a session ids grow with seqs.
    select i.*, row_number() over (partition by i.session_id order by i.ord) as rn,
           nextval('messages_id_seq') as id, nextval('outbox_id_seq') as outbox_id
      from i cross join lateral (
        select 1 from session_members sm where sm.session_id = i.session_id and sm.username = i.sender limit 1
      ) member
     where not exists (select 1 from prior p where p.ord = i.ord)
  ), locked as materialized (
    select x.id from sessions x where x.id in (select session_id from fresh) order by x.id for no key update
  ), s as materialized (
    update sessions set max_seq_id = sessions.max_seq_id + c.n
      from (select session_id, count(*) as n from fresh group by session_id) c
     where sessions.id = c.session_id and sessions.id in (select id from locked)
    returning sessions.id, sessions.max_seq_id - c.n as base, sessions.name, sessions.type, sessions.member_count > $10 as large
  ), m as (
    insert into messages (id, session_id, seq_id, sender, to_username, content, type, client_msg_id, created_at)
    select f.id, f.session_id, s.base + f.rn, f.sender, f.to_username, f.content, f.type, f.client_msg_id, $7
      from fresh f join s on s.id = f.session_id
     order by f.ord
  ), o as (
    insert into outbox (id, msg_id, claimed_until, claimed_by)
    select f.outbox_id, f.id, now() + ($8::int * interval '1 millisecond'), $9
      from fresh f join s on s.id = f.session_id
     order by f.id
  )
  select i.ord, f.id, s.base + f.rn as seq_id, f.outbox_id, s.name, s.type as stype, s.large,
         p.id as prior_id, p.seq_id as prior_seq, p.same
    from i
    left join prior p on p.ord = i.ord
    left join (fresh f join s on s.id = f.session_id) on f.ord = i.ord
   order by i.ord`;

/** RESONANCE_INBOX_FANOUT_LIMIT's default (see the README). */
export const DEFAULT_FANOUT_LIMIT = 200;

/**
 * Joined into an outbox claim, mark or delete: that statement's implicit transaction commits
 * without waiting for its WAL flush (`synchronous_commit` off for it alone). Losing one in a
 * database crash only publishes an event again, which the queue's dedup and the idempotent
 * inbox absorb. The message commit itself always waits for its flush: its ack follows it.
 */
const ASYNC_COMMIT = "(select set_config('synchronous_commit', 'off', true)) as async_commit";

/** Every SQL statement of the logic service. Parameterized only. */
export class LogicStore {
  readonly #db: Storage;
  /** Sessions with more members are large (RESONANCE_INBOX_FANOUT_LIMIT). */
  readonly fanoutLimit: number;

  constructor(db: Storage, opts: { inboxFanoutLimit?: number } = {}) {
    this.#db = db;
    this.fanoutLimit = opts.inboxFanoutLimit ?? DEFAULT_FANOUT_LIMIT;
  }

  /** The user with exactly this name (as stored: token subjects, session members). */
  async findUser(username: string): Promise<UserRow | undefined> {
    const { rows } = await this.#db.query<UserRow>(`select ${USER_COLUMNS} from users where username = $1`, [username]);
    return rows[0];
  }

  /**
   * The account a login name means, whatever its case: the exact spelling first (accounts that
   * differed only in case before usernames became case-insensitive keep theirs), else the owner
   * of the name.
   */
  async findLogin(name: string): Promise<UserRow | undefined> {
    const { rows } = await this.#db.query<UserRow>(
      `select ${USER_COLUMNS} from users where lower(username) = lower($1)
        order by (username = $1) desc, case_duplicate, created_at limit 1`,
      [name],
    );
    return rows[0];
  }

  /** Refuses every token of the user issued before `atMs` (never moves back). */
  async revokeAllTokens(username: string, atMs: number): Promise<void> {
    await this.#db.query("update users set tokens_valid_after = greatest(tokens_valid_after, $2::bigint) where username = $1", [username, atMs]);
  }

  /**
   * Creates the user and joins them to the public room; false if the name is taken in any
   * spelling (the unique index on lower(username)).
   */
  async createUser(username: string, nickname: string, passwordHash: string): Promise<boolean> {
    return this.#db.transaction(async (tx) => {
      const { rowCount } = await tx.query(
        "insert into users (username, nickname, password_hash) values ($1, $2, $3) on conflict do nothing",
        [username, nickname, passwordHash],
      );
      if (rowCount === 0) return false;
      await tx.query(
        `with j as (insert into session_members (session_id, username, last_read_seq) select id, $2, max_seq_id from sessions where id = $1
                    on conflict do nothing returning session_id)
         update sessions set member_count = member_count + (select count(*) from j) where id = $1`,
        [PUBLIC_ROOM, username],
      );
      return true;
    });
  }

  /** Revokes a token until its expiry (unix seconds); drops revocations that have expired. */
  async revokeToken(jti: string, expiresAt: number): Promise<void> {
    await this.#db.query("delete from revoked_tokens where expires_at < now()");
    await this.#db.query("insert into revoked_tokens (jti, expires_at) values ($1, to_timestamp($2)) on conflict do nothing", [jti, expiresAt]);
  }

  async isRevoked(jti: string): Promise<boolean> {
    const { rows } = await this.#db.query("select 1 from revoked_tokens where jti = $1", [jti]);
    return rows.length > 0;
  }

  async existingUsers(usernames: readonly string[]): Promise<Set<string>> {
    const { rows } = await this.#db.query<{ username: string }>("select username from users where username = any($1)", [usernames]);
    return new Set(rows.map((r) => r.username));
  }

  /**
   * The stored name of each given name, matched regardless of case (as Login does): a map from
   * each given name that exists to the account's own spelling.
   */
  async resolveUsers(names: readonly string[]): Promise<Map<string, string>> {
    const { rows } = await this.#db.query<{ username: string; case_duplicate: boolean }>(
      "select username, case_duplicate from users where lower(username) = any($1::text[])",
      [[...new Set(names.map((n) => n.toLowerCase()))]],
    );
    const out = new Map<string, string>();
    for (const name of names) {
      const matches = rows.filter((r) => r.username.toLowerCase() === name.toLowerCase());
      const pick = matches.find((r) => r.username === name) ?? matches.find((r) => !r.case_duplicate) ?? matches[0];
      if (pick) out.set(name, pick.username);
    }
    return out;
  }

  async isMember(sessionId: string, username: string): Promise<boolean> {
    const { rows } = await this.#db.query("select 1 from session_members where session_id = $1 and username = $2", [sessionId, username]);
    return rows.length > 0;
  }

  async requireMember(sessionId: string, username: string): Promise<void> {
    if (!(await this.isMember(sessionId, username))) {
      throw new ConnectError(`not a member of session ${sessionId}`, Code.PermissionDenied);
    }
  }

  /**
   * Creates a session with its members and its system message, in one transaction.
   * Resolves with the id and whether it was created (a single chat that exists is returned as is).
   * `announce` is the system message, or makes it from the creator's nickname. A one-to-one chat
   * without a name is stored under the creator's nickname: its first system message carries that
   * as the session meta name, which is how the Go system's clients title the chat on the other
   * side (the session list names it per reader, see {@link sessionList}).
   */
  async createSession(
    id: string | undefined,
    name: string,
    type: number,
    creator: string,
    members: readonly string[],
    announce: string | ((creatorNickname: string) => string),
  ): Promise<{ sessionId: string; created: Committed | undefined }> {
    return this.#db.transaction(async (tx) => {
      const { rows: who } = await tx.query<{ nickname: string }>("select nickname from users where username = $1", [creator]);
      const nickname = who[0]?.nickname || creator;
      if (type === SESSION_SINGLE && !name) name = nickname;
      let sessionId = id;
      if (sessionId === undefined) {
        const { rows } = await tx.query<{ id: string }>("select nextval('group_session_id')::text as id");
        sessionId = `group:${rows[0]!.id}`;
      }
      const { rowCount } = await tx.query(
        "insert into sessions (id, name, type) values ($1, $2, $3) on conflict (id) do nothing",
        [sessionId, name, type],
      );
      if (rowCount === 0) return { sessionId, created: undefined };
      await tx.query(
        `with j as (insert into session_members (session_id, username) select $1, unnest($2::text[]) on conflict do nothing returning username)
         update sessions set member_count = member_count + (select count(*) from j) where id = $1`,
        [sessionId, [...new Set([creator, ...members])]],
      );
      const created = await this.#insertMessage(tx, {
        sessionId,
        from: creator,
        to: "",
        content: typeof announce === "string" ? announce : announce(nickname),
        type: "system",
        clientMsgId: undefined,
      });
      if (!created) throw new Error(`session ${sessionId} vanished while it was being created`);
      return { sessionId, created };
    });
  }

  /**
   * Commits a batch of messages, of any sessions, in one statement (see {@link COMMIT_BATCH}):
   * resolves with one outcome per message, in order, and the queue events of the new ones (their
   * outbox rows are claimed by `owner` for `claimMs`, for the relay's fast path). Each message is
   * answered on its own: committed, a resend (its original ids), or refused. Two messages of one
   * batch must not share (sender, session, client id): the caller answers the second itself.
   * Rejects when the statement fails as a whole (the caller retries or splits the batch).
   */
  async commitBatch(batch: readonly NewMessage[], claimMs: number, owner: string): Promise<BatchResult> {
    const now = Math.floor(Date.now() / 1000);
    const { rows } = await this.#db.query<BatchRow>(COMMIT_BATCH, [
      batch.map((m) => m.sessionId),
      batch.map((m) => m.from),
      batch.map((m) => m.to),
      batch.map((m) => m.content),
      batch.map((m) => m.type),
      batch.map((m) => m.clientMsgId ?? null),
      now,
      claimMs,
      owner,
      this.fanoutLimit,
    ]);
    const outcomes: CommitOutcome[] = [];
    const events: CommittedEvent[] = [];
    for (const [i, m] of batch.entries()) {
      const r = rows[i];
      if (!r || Number(r.ord) !== i + 1) throw new Error("commit: results out of step with the batch");
      if (r.id !== null) {
        outcomes.push({ msgId: BigInt(r.id), seqId: BigInt(r.seq_id!), sessionId: m.sessionId, created: true });
        const message = { msgId: BigInt(r.id), seqId: BigInt(r.seq_id!), sessionId: m.sessionId, fromUsername: m.from, toUsername: m.to, content: m.content, type: m.type, timestamp: BigInt(now) };
        const data = toBinary(PushEventSchema, create(PushEventSchema, { ...message, sessionName: r.name!, sessionType: r.stype!, large: r.large! }));
        events.push({ outboxId: r.outbox_id!, msgId: r.id, data });
      } else if (r.prior_id !== null) {
        outcomes.push(
          r.same
            ? { msgId: BigInt(r.prior_id), seqId: BigInt(r.prior_seq!), sessionId: m.sessionId, created: false }
            : new ConnectError("client_msg_id was already used for a different message", Code.AlreadyExists),
        );
      } else {
        // One answer for both: it must not tell who has a session with whom.
        outcomes.push(new ConnectError("not a member of this session (or no such session)", Code.PermissionDenied));
      }
    }
    return { outcomes, events };
  }

  /**
   * Runs {@link INSERT_MESSAGE}: resolves with the ids, or undefined when the session does not
   * exist or the sender is not one of its members (nothing written).
   */
  async #insertMessage(q: Queryable, m: NewMessage): Promise<Committed | undefined> {
    const now = Math.floor(Date.now() / 1000);
    const { rows } = await q.query<{ id: string; seq_id: string }>(INSERT_MESSAGE, [
      m.sessionId,
      m.from,
      m.to,
      m.content,
      m.type,
      m.clientMsgId ?? null,
      now,
    ]);
    const r = rows[0];
    return r && { msgId: BigInt(r.id), seqId: BigInt(r.seq_id), sessionId: m.sessionId, created: true };
  }


  async sessionList(username: string): Promise<SessionInfo[]> {
    // A one-to-one chat is named after the other member's nickname (their username if they have none).
    const { rows } = await this.#db.query<
      MessageRow & { sid: string; name: string; stype: number; avatar_url: string; max_seq_id: string; last_read_seq: string; peer: string | null; large: boolean }
    >(
      `select s.id as sid, s.name, s.type as stype, s.avatar_url, s.max_seq_id, sm.last_read_seq, s.member_count > $3 as large, ${MSG_COLUMNS},
              (select coalesce(nullif(u.nickname, ''), u.username) from session_members o join users u on u.username = o.username
                where s.type = $2 and o.session_id = s.id and o.username <> $1 limit 1) as peer
         from session_members sm
         join sessions s on s.id = sm.session_id
         left join messages m on m.session_id = s.id and m.seq_id = s.max_seq_id
        where sm.username = $1
        order by m.id desc nulls last, s.id`,
      [username, SESSION_SINGLE, this.fanoutLimit],
    );
    return rows.map((r) => {
      const unread = BigInt(r.max_seq_id) - BigInt(r.last_read_seq);
      return create(SessionInfoSchema, {
        sessionId: r.sid,
        name: r.stype === SESSION_SINGLE ? (r.peer ?? singleChatName(r.sid, username)) : r.name,
        type: r.stype,
        avatarUrl: r.avatar_url,
        unreadCount: unread > 0n ? unread : 0n,
        lastReadSeq: BigInt(r.last_read_seq),
        maxSeqId: BigInt(r.max_seq_id),
        large: r.large,
        ...(r.id ? { lastMessage: toPush(r, { name: r.name, type: r.stype }) } : {}),
      });
    });
  }

  /** Messages after `afterSeq`, ascending by seq, the oldest `limit` of them (catch-up by seq). */
  async historyAfter(sessionId: string, afterSeq: bigint, limit: number): Promise<PushMessage[]> {
    const { rows } = await this.#db.query<MessageRow & { name: string; stype: number }>(
      `select ${MSG_COLUMNS}, s.name, s.type as stype from messages m join sessions s on s.id = m.session_id
        where m.session_id = $1 and m.seq_id > $2::bigint
        order by m.seq_id limit $3`,
      [sessionId, afterSeq.toString(), limit],
    );
    return rows.map((r) => toPush(r, { name: r.name, type: r.stype }));
  }

  /**
   * The caller's large sessions whose last seq is past what the client knows (`known`: session →
   * highest seq it has); for a session not in `known`, past the caller's read position.
   */
  async movedLargeSessions(username: string, known: ReadonlyMap<string, bigint>): Promise<Array<{ sessionId: string; afterSeq: bigint; maxSeqId: bigint }>> {
    const { rows } = await this.#db.query<{ id: string; after_seq: string; max_seq_id: string }>(
      `select s.id, coalesce(k.seq, sm.last_read_seq) as after_seq, s.max_seq_id
         from session_members sm
         join sessions s on s.id = sm.session_id
         left join unnest($3::text[], $4::bigint[]) as k(sid, seq) on k.sid = s.id
        where sm.username = $1 and s.member_count > $2 and s.max_seq_id > coalesce(k.seq, sm.last_read_seq)
        order by s.id`,
      [username, this.fanoutLimit, [...known.keys()], [...known.values()].map(String)],
    );
    return rows.map((r) => ({ sessionId: r.id, afterSeq: BigInt(r.after_seq), maxSeqId: BigInt(r.max_seq_id) }));
  }

  /** Which of `usernames` are members of which large sessions (only of `sessionId` when given). */
  async largeMemberships(usernames: readonly string[], sessionId: string | undefined): Promise<Array<{ username: string; sessionId: string }>> {
    const { rows } = await this.#db.query<{ username: string; session_id: string }>(
      `select sm.username, sm.session_id from session_members sm join sessions s on s.id = sm.session_id
        where sm.username = any($1::text[]) and s.member_count > $2 and ($3::text is null or s.id = $3)`,
      [usernames, this.fanoutLimit, sessionId ?? null],
    );
    return rows.map((r) => ({ username: r.username, sessionId: r.session_id }));
  }

  /** Messages before `beforeSeq` (0 = newest), ascending by seq. */
  async history(sessionId: string, beforeSeq: bigint, limit: number): Promise<PushMessage[]> {
    const { rows } = await this.#db.query<MessageRow & { name: string; stype: number }>(
      `select ${MSG_COLUMNS}, s.name, s.type as stype from messages m join sessions s on s.id = m.session_id
        where m.session_id = $1 and ($2::bigint = 0 or m.seq_id < $2::bigint)
        order by m.seq_id desc limit $3`,
      [sessionId, beforeSeq.toString(), limit],
    );
    return rows.reverse().map((r) => toPush(r, { name: r.name, type: r.stype }));
  }

  async contacts(username: string): Promise<ContactInfo[]> {
    const { rows } = await this.#db.query<{ username: string; nickname: string; avatar_url: string }>(
      `select distinct u.username, u.nickname, u.avatar_url
         from session_members mine
         join sessions s on s.id = mine.session_id and s.type = $2
         join session_members other on other.session_id = mine.session_id and other.username <> mine.username
         join users u on u.username = other.username
        where mine.username = $1
        order by u.username`,
      [username, SESSION_SINGLE],
    );
    return rows.map((r) => create(ContactInfoSchema, { username: r.username, nickname: r.nickname, avatarUrl: r.avatar_url }));
  }

  async searchUsers(query: string, limit: number): Promise<ContactInfo[]> {
    const pattern = `%${query.replace(/[\\%_]/g, (c) => `\\${c}`)}%`;
    const { rows } = await this.#db.query<{ username: string; nickname: string; avatar_url: string }>(
      `select username, nickname, avatar_url from users
        where username ilike $1 or nickname ilike $1 order by username limit $2`,
      [pattern, limit],
    );
    return rows.map((r) => create(ContactInfoSchema, { username: r.username, nickname: r.nickname, avatarUrl: r.avatar_url }));
  }

  /** Moves the read position forward (never back, never past the last message); resolves with the unread count. */
  async updateReadPosition(sessionId: string, username: string, seqId: bigint): Promise<bigint> {
    const { rows } = await this.#db.query<{ last_read_seq: string; max_seq_id: string }>(
      `update session_members sm
          set last_read_seq = greatest(sm.last_read_seq, least($3::bigint, s.max_seq_id))
         from sessions s
        where s.id = sm.session_id and sm.session_id = $1 and sm.username = $2
        returning sm.last_read_seq, s.max_seq_id`,
      [sessionId, username, seqId.toString()],
    );
    const r = rows[0];
    if (!r) throw new ConnectError(`not a member of session ${sessionId}`, Code.PermissionDenied);
    const unread = BigInt(r.max_seq_id) - BigInt(r.last_read_seq);
    return unread > 0n ? unread : 0n;
  }

  async inboxDelta(username: string, cursor: bigint, limit: number): Promise<{ events: InboxEvent[]; next: bigint; hasMore: boolean }> {
    const { rows } = await this.#db.query<MessageRow & { inbox_id: string; name: string; stype: number }>(
      `select i.id as inbox_id, ${MSG_COLUMNS}, s.name, s.type as stype
         from inbox i
         join messages m on m.id = i.msg_id
         join sessions s on s.id = m.session_id
        where i.owner = $1 and i.id > $2
        order by i.id limit $3`,
      [username, cursor.toString(), limit + 1],
    );
    const hasMore = rows.length > limit;
    const page = rows.slice(0, limit);
    const events = page.map((r) => create(InboxEventSchema, { inboxId: BigInt(r.inbox_id), message: toPush(r, { name: r.name, type: r.stype }) }));
    const last = page.at(-1);
    return { events, next: last ? BigInt(last.inbox_id) : cursor, hasMore };
  }

  /**
   * Claims up to `limit` unpublished outbox rows whose claim ran out (or that were never claimed),
   * for `claimMs`, in a short statement of its own, so publishing never holds a transaction open.
   */
  async claimOutbox(limit: number, claimMs: number, owner: string): Promise<Array<{ id: string; msg_id: string }>> {
    const { rows } = await this.#db.query<{ id: string; msg_id: string }>(
      `update outbox set claimed_until = now() + ($2::int * interval '1 millisecond'), claimed_by = $3
         from ${ASYNC_COMMIT}
        where id in (select id from outbox where published_at is null and claimed_until < now()
                      order by claimed_until, id limit $1 for update skip locked)
        returning id, msg_id`,
      [limit, claimMs, owner],
    );
    return rows.sort((a, b) => Number(BigInt(a.id) - BigInt(b.id)));
  }

  /** The queue events of committed messages (PushEvent, encoded), in the order asked. */
  async pushEvents(msgIds: readonly string[]): Promise<Map<string, Uint8Array>> {
    const { rows } = await this.#db.query<MessageRow & { name: string; stype: number; large: boolean }>(
      `select ${MSG_COLUMNS}, s.name, s.type as stype, s.member_count > $2 as large from messages m join sessions s on s.id = m.session_id
        where m.id = any($1::bigint[])`,
      [msgIds, this.fanoutLimit],
    );
    return new Map(
      rows.map((r) => {
        // The event carries the message's fields plus the session's name, type and size (decided
        // here, once: the published event is what every delivery sees).
        const { $typeName: _, sessionMeta: __, ...message } = toPush(r);
        const event = create(PushEventSchema, { ...message, sessionName: r.name, sessionType: r.stype, large: r.large });
        return [r.id, toBinary(PushEventSchema, event)];
      }),
    );
  }

  /** The events were published and the queue has them on disk: the rows go. */
  async deleteOutbox(ids: readonly string[]): Promise<void> {
    await this.#db.query(`delete from outbox using ${ASYNC_COMMIT} where id = any($1::bigint[])`, [ids]);
  }

  /**
   * The events were published to the queue server `server`, which may not have them on disk yet:
   * the rows stay, marked, until {@link deleteSynced} (or {@link republishLost}) sees to them.
   */
  async markPublished(ids: readonly string[], server: string): Promise<void> {
    await this.#db.query(`update outbox set published_at = now(), published_to = $2 from ${ASYNC_COMMIT} where id = any($1::bigint[])`, [ids, server]);
  }

  /** Deletes up to `limit` rows published more than `syncedMs` ago; resolves with how many went. */
  async deleteSynced(syncedMs: number, limit: number): Promise<number> {
    const { rowCount } = await this.#db.query(
      `delete from outbox using ${ASYNC_COMMIT} where id in (select id from outbox where published_at < now() - ($1::int * interval '1 millisecond')
                                        order by published_at limit $2)`,
      [syncedMs, limit],
    );
    return rowCount;
  }

  /**
   * Makes the rows published to any server but `server` claimable again: a queue server that
   * restarted (a new id) may have lost what it had acknowledged and not yet written to disk.
   * Resolves with how many rows will be published again.
   */
  async republishLost(server: string): Promise<number> {
    const { rowCount } = await this.#db.query(
      "update outbox set published_at = null, published_to = null, claimed_until = '-infinity' where published_at is not null and published_to <> $1",
      [server],
    );
    return rowCount;
  }

  /** Gives claimed rows back at once (publish failed). */
  async releaseOutbox(ids: readonly string[]): Promise<void> {
    await this.#db.query("update outbox set claimed_until = '-infinity', claimed_by = null where id = any($1::bigint[]) and published_at is null", [ids]);
  }

  /**
   * Gives back the claims of a relay that died: those of `owner` (an instance id is never used
   * by two live processes), or every claim when `all` (embedded storage has one process only).
   */
  async releaseStaleClaims(owner: string, all: boolean): Promise<void> {
    await this.#db.query(
      "update outbox set claimed_until = '-infinity', claimed_by = null where published_at is null and claimed_until > '-infinity' and ($2 or claimed_by = $1)",
      [owner, all],
    );
  }

  /** Outbox events not yet published. */
  async outboxBacklog(): Promise<number> {
    const { rows } = await this.#db.query<{ n: string }>("select count(*) as n from outbox where published_at is null");
    return Number(rows[0]?.n ?? 0);
  }

  get db(): Storage {
    return this.#db;
  }
}

/** The id of the single chat between two users: `single:<a>:<b>`, names sorted. */
export function singleChatId(a: string, b: string): string {
  return a < b ? `single:${a}:${b}` : `single:${b}:${a}`;
}

/** A single chat is named after the other member. */
function singleChatName(sessionId: string, me: string): string {
  const [, a, b] = sessionId.split(":");
  return (a === me ? b : a) ?? sessionId;
}
