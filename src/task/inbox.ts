import type { Queryable } from "../infra/storage/types.js";

/**
 * The inbox write of a batch of events ($1 sessions, $2 seqs, $3 msg ids: parallel arrays, in
 * delivery order): a row for every member of each event's session, none twice (a redelivery
 * inserts nothing). It takes events from the front of the batch while their members add up to at
 * most $4 rows (always at least the first event) and returns, for each event it took, its
 * position (1-based) and its members — one row with a null member for an event whose session
 * has none. The caller sends the events it did not take in the next statement.
 *
 * The inbox id is each owner's delta cursor, so for one owner ids must become visible in id
 * order. The statement first takes a transaction lock per owner of the whole batch, in name
 * order (so two batches never deadlock), and only then draws the ids: a later batch with one of
 * these owners waits for this commit and draws higher ids. Without it a client could read id 105
 * while 104 is still uncommitted, move its cursor past 104 and never see it. Inside the batch,
 * the rows of one session draw their ids in seq order.
 *
 * Members are read by index, per session (lateral): joined as a whole, the planner scanned every
 * membership of every session, twice per statement.
 * The row cap bounds the locks one transaction holds: PostgreSQL's shared lock table has room
 * for about 6,400 by default, and PGlite fails at about 17,000.
 */
export const INBOX_INSERT = `
  with ev as (
         select * from unnest($1::text[], $2::bigint[], $3::bigint[]) with ordinality as e(session_id, seq_id, msg_id, ord)),
       sizes as (
         select e.session_id, c.n from (select distinct session_id from ev) e
          cross join lateral (select count(*) as n from session_members sm where sm.session_id = e.session_id) c),
       taken as materialized (
         select ev.* from (
           select ev.*, sum(coalesce(sizes.n, 0)) over (order by ev.ord) as upto
             from ev left join sizes using (session_id)) ev
          where ev.upto <= $4 or ev.ord = 1),
       members as materialized (
         select t.ord, t.session_id, t.seq_id, t.msg_id, m.username
           from taken t
          cross join lateral (select sm.username from session_members sm where sm.session_id = t.session_id offset 0) m),
       owners as materialized (select distinct username from members order by username),
       locks as (select count(pg_advisory_xact_lock(hashtextextended('resonance-inbox:' || username, 0))) as n from owners),
       ins as (insert into inbox (owner, session_id, seq_id, msg_id)
               select username, session_id, seq_id, msg_id from members, locks where locks.n >= 0
                order by session_id, seq_id, ord
               on conflict do nothing)
  select t.ord, m.username from taken t left join members m on m.ord = t.ord order by t.ord, m.username`;

/** Most inbox rows (and so owner locks) one statement writes; an event with more members goes alone. */
export const INBOX_MAX_ROWS = 1_024;

/** What the inbox statement needs of an event. */
export interface InboxEvent {
  readonly sessionId: string;
  readonly seqId: bigint;
  readonly msgId: bigint;
}

/**
 * Runs {@link INBOX_INSERT} once for the front of `events` (its own implicit transaction):
 * resolves with the members of each event it wrote, in order — fewer entries than `events` when
 * the row cap stopped it, at least one. Rejects if the statement fails (nothing written).
 */
export async function writeInboxFront(db: Queryable, events: readonly InboxEvent[], maxRows = INBOX_MAX_ROWS): Promise<string[][]> {
  const { rows } = await db.query<{ ord: string | number; username: string | null }>(INBOX_INSERT, [
    events.map((e) => e.sessionId),
    events.map((e) => e.seqId.toString()),
    events.map((e) => e.msgId.toString()),
    maxRows,
  ]);
  const members: string[][] = [];
  for (const r of rows) {
    const i = Number(r.ord) - 1;
    while (members.length <= i) members.push([]);
    if (r.username !== null) members[i]!.push(r.username);
  }
  return members;
}
