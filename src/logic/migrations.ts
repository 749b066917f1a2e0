import type { Migration } from "../infra/storage/migrate.js";

/**
 * The schema, as versioned migrations. Never edit an applied migration: add a new one.
 * The same SQL runs on PostgreSQL and PGlite.
 */
export const migrations: readonly Migration[] = [
  {
    version: 1,
    name: "initial schema",
    sql: `
      create table users (
        username      text primary key,
        nickname      text not null,
        avatar_url    text not null default '',
        password_hash text not null,
        created_at    timestamptz not null default now()
      );

      create table sessions (
        id          text primary key,
        name        text not null,
        type        int not null check (type in (1, 2)),
        avatar_url  text not null default '',
        max_seq_id  bigint not null default 0,
        created_at  timestamptz not null default now()
      );
      create sequence group_session_id;

      create table session_members (
        session_id    text not null references sessions (id),
        username      text not null references users (username),
        last_read_seq bigint not null default 0,
        joined_at     timestamptz not null default now(),
        primary key (session_id, username)
      );
      create index session_members_by_user on session_members (username);

      create table messages (
        id            bigserial primary key,
        session_id    text not null references sessions (id),
        seq_id        bigint not null,
        sender        text not null,
        to_username   text not null default '',
        content       text not null,
        type          text not null,
        client_msg_id text,
        created_at    bigint not null,
        unique (session_id, seq_id),
        unique (sender, client_msg_id)
      );

      -- The inbox: one row per member per message; its id is the delta cursor.
      create table inbox (
        id         bigserial primary key,
        owner      text not null,
        session_id text not null,
        seq_id     bigint not null,
        msg_id     bigint not null,
        unique (owner, session_id, seq_id)
      );
      create index inbox_by_owner on inbox (owner, id);

      -- Messages committed and not yet published to the queue (the event is built from the message).
      create table outbox (
        id         bigserial primary key,
        msg_id     bigint not null,
        created_at timestamptz not null default now(),
        -- A relay claims rows for a while; a relay that died leaves them to the next one.
        claimed_until timestamptz,
        claimed_by    text
      );

      insert into sessions (id, name, type) values ('0', 'Resonance Room', 2);
    `,
  },
  {
    version: 2,
    name: "revoked tokens",
    sql: `
      -- Tokens logged out before their expiry (rows go once the token would have expired anyway).
      create table revoked_tokens (
        jti        text primary key,
        expires_at timestamptz not null
      );
    `,
  },
  {
    version: 3,
    name: "accounts: usernames unique regardless of case; log out everywhere",
    sql: `
      -- Accounts that already differ only in case are all kept (renaming one would break its
      -- sessions, history and single-chat ids): the oldest of each such group is the owner of the
      -- name; the others are marked and go on logging in with their exact spelling. No new
      -- account can take any spelling of a name that exists.
      alter table users add column case_duplicate boolean not null default false;
      update users u set case_duplicate = true
       where exists (select 1 from users o
                      where lower(o.username) = lower(u.username)
                        and (o.created_at, o.username) < (u.created_at, u.username));
      create unique index users_username_ci on users (lower(username)) where not case_duplicate;
      create index users_username_lower on users (lower(username));

      -- Tokens issued before this moment (ms since epoch) are refused: "log out everywhere".
      alter table users add column tokens_valid_after bigint not null default 0;
    `,
  },
  {
    version: 4,
    name: "group commit: client ids per (sender, session); outbox rows kept until the queue has synced them",
    sql: `
      -- A client's message id is unique per sender and session (the same id in two sessions is
      -- two messages). Every existing row was unique under the stricter key, so this always builds.
      alter table messages drop constraint messages_sender_client_msg_id_key;
      alter table messages add constraint messages_sender_session_client_key unique (sender, session_id, client_msg_id);

      -- A row is claimable once its claim has run out ('-infinity': never claimed). A published
      -- row stays (published_at set) until the queue server has written it to disk, so that the
      -- events a server lost in a crash can be published again (published_to: the server's id).
      update outbox set claimed_until = '-infinity' where claimed_until is null;
      alter table outbox alter column claimed_until set default '-infinity',
                         alter column claimed_until set not null,
                         add column published_at timestamptz,
                         add column published_to text;
      create index outbox_unpublished on outbox (claimed_until, id) where published_at is null;
      create index outbox_published on outbox (published_at) where published_at is not null;
    `,
  },
  {
    version: 5,
    name: "large sessions: member count",
    sql: `
      -- Kept by the code that adds members (registration, session creation). A session with more
      -- members than RESONANCE_INBOX_FANOUT_LIMIT is "large": its messages get no inbox rows.
      alter table sessions add column member_count int not null default 0;
      update sessions s set member_count = (select count(*) from session_members m where m.session_id = s.id);
    `,
  },
];
