/**
 * The inbox write of one event ($1 session, $2 seq, $3 msg_id): a row for every member, none
 * twice (a redelivery inserts nothing); returns the members.
 *
 * The inbox id is each owner's delta cursor, so for one owner ids must become visible in id
 * order. The statement first takes a transaction lock per member (in name order, so two events
 * never deadlock) and only then draws the ids: a later event for the same owner waits for this
 * commit and draws higher ids. Without it a client could read id 105 while 104 is still
 * uncommitted, move its cursor past 104 and never see it.
 */
export const INBOX_INSERT = `
  with members as materialized (select username from session_members where session_id = $1 order by username),
       locks as (select count(pg_advisory_xact_lock(hashtextextended('resonance-inbox:' || username, 0))) as n from members),
       ins as (insert into inbox (owner, session_id, seq_id, msg_id)
               select username, $1, $2, $3 from members, locks where locks.n >= 0
               on conflict do nothing)
  select username from members`;
