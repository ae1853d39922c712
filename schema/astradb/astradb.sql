-- The astra schema: which tasks ran, with what parameters, and what they needed.
-- Load with:  psql -d DBNAME < schema/astradb/astradb.sql   (or: astra db init)
-- Safe to load again: it only creates what is missing and never drops data.
-- The peewee models in astra/database/models.py describe the same tables; tests/test_schema.py checks they agree.

create schema if not exists astra;

-- Which astra schema this database holds (astra/database/versions.py; `astra db upgrade` applies the later ones).
-- A database made by astra before versions were recorded has astra.task but no row here: that is schema 1.
create table if not exists astra.schema_version (
    version integer primary key,
    applied timestamp with time zone not null
);
-- Only a new database is at the current version; an older one keeps its number until `astra db upgrade`.
insert into astra.schema_version (version, applied) select 12, now() where to_regclass('astra.task') is null;

create table if not exists astra.task (
    pk bigserial primary key,
    task_module text not null,
    task_name text not null,            -- luigi's task family
    task_id text not null,              -- luigi's task_id, as shown by luigid
    -- sha256 of module, name, version, significant parameters and what it requires: the 32 bytes (schema 11);
    -- as text: encode(task_hash, 'hex')
    task_hash bytea not null check (length(task_hash) = 32),
    version text not null,              -- the task class's version string
    status text not null,               -- running | done | failed
    created timestamp with time zone not null,
    started timestamp with time zone,
    heartbeat timestamp with time zone,
    completed timestamp with time zone,
    duration double precision,          -- seconds spent in run()
    host text,
    pid integer,
    lease double precision,             -- the holder's own [astra] lease: silent this long, it may be taken over
    claim_token text,                   -- random per claim: only the attempt holding this token writes the row
    attempts integer not null,          -- how many times the task was claimed
    astra_version text not null,
    result jsonb,                       -- what run() returned (astra/values.py: NaN, dates tagged)
    error text,
    traceback text,
    dynamic_dependencies integer,       -- how many astra tasks run() yielded (recorded as dynamic edges); null: none
    slurm_job_id text,                  -- the SLURM job (or array element, 123_4) that ran the task
    slurm_node text                     -- the node that job ran on
);
-- Columns added after the first release, for tables created before them.
alter table astra.task add column if not exists lease double precision;
alter table astra.task add column if not exists claim_token text;
alter table astra.task add column if not exists slurm_job_id text;
alter table astra.task add column if not exists slurm_node text;
-- Holds the status too (schema 12): the all-done check reads keys and statuses from the index alone.
create unique index if not exists task_task_hash on astra.task (task_hash) include (status);
create index if not exists task_task_name_status on astra.task (task_name, status);
-- task_id is only looked up by equality (astra tasks show TASK_ID): a hash index is half a btree's size.
create index if not exists task_task_id on astra.task using hash (task_id);
-- Done tasks with a JSON result: is any task of an output model's class recorded without its rows? (schema 10)
create index if not exists task_json_result on astra.task ((task_module || '.' || task_name))
    where result is not null and status = 'done';

create table if not exists astra.parameter (
    pk bigserial primary key,
    parameter_name text not null,
    parameter_value text not null,
    -- sha256 of name and value, its 32 bytes (a btree cannot hold values over ~2.7 kB); as text: encode(.., 'hex')
    parameter_hash bytea not null check (length(parameter_hash) = 32)
);
create unique index if not exists parameter_parameter_hash on astra.parameter (parameter_hash);
create index if not exists parameter_parameter_name on astra.parameter (parameter_name);

-- Which parameters each task was given. Its two references are checked by the triggers at the end of this file,
-- once per statement, rather than by foreign keys, once per row (schema 9).
create table if not exists astra.task_parameter (
    task_pk bigint not null,            -- astra.task (pk); deleting the task deletes the link
    parameter_pk bigint not null,       -- astra.parameter (pk); a parameter still linked cannot be deleted
    primary key (task_pk, parameter_pk)
);
create index if not exists task_parameter_parameter_pk on astra.task_parameter (parameter_pk);

create table if not exists astra.dependency (
    task_pk bigint not null references astra.task (pk) on delete cascade,
    requires_pk bigint not null references astra.task (pk) on delete cascade,
    dynamic boolean not null default false,  -- yielded by run(), rather than returned by requires()
    primary key (task_pk, requires_pk)
);
create index if not exists dependency_requires_pk on astra.dependency (requires_pk);

-- Columns added since the first layout: added to tables made before them (dynamic dependencies).
alter table astra.task add column if not exists dynamic_dependencies integer;
alter table astra.dependency add column if not exists dynamic boolean not null default false;

-- The references of astra.task_parameter (schema 9). A batch writes two links per item; foreign keys would check
-- and lock the task and the parameter of each link, one query per row, which cost more than the rest of the item's
-- rows together. These triggers check each statement's links in one query, and keep what the foreign keys kept:
-- no link to a missing task or parameter, a task's links go with it, a parameter still linked stays.
-- Against concurrent writers (READ COMMITTED, astra's own transactions): a delete of tasks or parameters first waits
-- for every transaction writing links and keeps new ones out until it ends, so a link checked before the delete
-- commits is committed before the delete looks for links, and a link checked afterwards finds its row gone.
create or replace function astra.task_parameter_check() returns trigger language plpgsql as $$
begin
    if current_setting('transaction_isolation') <> 'read committed' then
        -- This snapshot may predate a delete: lock the rows as a foreign key does, which fails on a deleted one.
        perform from astra.task as t where t.pk in (select task_pk from new_links) for key share of t;
        perform from astra.parameter as p where p.pk in (select parameter_pk from new_links) for key share of p;
    end if;
    -- One index probe per key, written so that no plan can scan the whole table instead: the plan is kept for
    -- the session, and the statement that made it may have had a thousand times fewer or more links.
    if exists (select from (select distinct task_pk from new_links) as l
               where (select t.pk from astra.task as t where t.pk = l.task_pk) is null) then
        raise foreign_key_violation using message = 'astra.task_parameter: a link to a task not in astra.task';
    end if;
    if exists (select from (select distinct parameter_pk from new_links) as l
               where (select p.pk from astra.parameter as p where p.pk = l.parameter_pk) is null) then
        raise foreign_key_violation
            using message = 'astra.task_parameter: a link to a parameter not in astra.parameter';
    end if;
    return null;
end $$;

create or replace function astra.task_deleted() returns trigger language plpgsql as $$
begin
    if current_setting('transaction_isolation') <> 'read committed' then
        raise exception 'astra: delete from astra.task in a READ COMMITTED transaction (see astra.task_parameter)'
            using errcode = 'feature_not_supported';
    end if;
    lock table astra.task_parameter in share row exclusive mode;  -- see above: the links of concurrent writers
    delete from astra.task_parameter where task_pk = any (array(select pk from old_rows));  -- by its index
    return null;
end $$;

create or replace function astra.parameter_deleted() returns trigger language plpgsql as $$
begin
    if current_setting('transaction_isolation') <> 'read committed' then
        raise exception 'astra: delete from astra.parameter in a READ COMMITTED transaction (see astra.task_parameter)'
            using errcode = 'feature_not_supported';
    end if;
    lock table astra.task_parameter in share row exclusive mode;  -- see above: the links of concurrent writers
    if exists (select from astra.task_parameter where parameter_pk = any (array(select pk from old_rows))) then
        raise foreign_key_violation using message = 'astra.parameter: a parameter still linked to a task';
    end if;
    return null;
end $$;

-- A task or parameter keeps its pk, and is truncated only together with astra.task_parameter.
create or replace function astra.links_kept() returns trigger language plpgsql as $$
begin
    if tg_op = 'UPDATE' then
        raise foreign_key_violation using message = 'astra.' || tg_table_name || ': a pk is never changed';
    end if;
    if exists (select from astra.task_parameter) then
        raise foreign_key_violation
            using message = 'astra.' || tg_table_name || ': truncate it together with astra.task_parameter';
    end if;
    return null;
end $$;

-- In one transaction: no statement finds the links unchecked between a drop and its create.
begin;
drop trigger if exists task_parameter_inserted on astra.task_parameter;
create trigger task_parameter_inserted after insert on astra.task_parameter
    referencing new table as new_links for each statement execute function astra.task_parameter_check();
drop trigger if exists task_parameter_updated on astra.task_parameter;
create trigger task_parameter_updated after update on astra.task_parameter
    referencing new table as new_links for each statement execute function astra.task_parameter_check();
drop trigger if exists task_deleted on astra.task;
create trigger task_deleted after delete on astra.task
    referencing old table as old_rows for each statement execute function astra.task_deleted();
drop trigger if exists parameter_deleted on astra.parameter;
create trigger parameter_deleted after delete on astra.parameter
    referencing old table as old_rows for each statement execute function astra.parameter_deleted();
drop trigger if exists task_pk_kept on astra.task;
create trigger task_pk_kept before update of pk on astra.task
    for each row when (old.pk <> new.pk) execute function astra.links_kept();
drop trigger if exists parameter_pk_kept on astra.parameter;
create trigger parameter_pk_kept before update of pk on astra.parameter
    for each row when (old.pk <> new.pk) execute function astra.links_kept();
drop trigger if exists task_truncated on astra.task;
create trigger task_truncated after truncate on astra.task
    for each statement execute function astra.links_kept();
drop trigger if exists parameter_truncated on astra.parameter;
create trigger parameter_truncated after truncate on astra.parameter
    for each statement execute function astra.links_kept();
commit;
