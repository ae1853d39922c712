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
insert into astra.schema_version (version, applied) select 8, now() where to_regclass('astra.task') is null;

create table if not exists astra.task (
    pk bigserial primary key,
    task_module text not null,
    task_name text not null,            -- luigi's task family
    task_id text not null,              -- luigi's task_id, as shown by luigid
    task_hash text not null,            -- sha256 of module, name, version and significant parameters
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
create unique index if not exists task_task_hash on astra.task (task_hash);
create index if not exists task_task_name_status on astra.task (task_name, status);
create index if not exists task_task_id on astra.task (task_id);

create table if not exists astra.parameter (
    pk bigserial primary key,
    parameter_name text not null,
    parameter_value text not null,
    parameter_hash text not null        -- sha256 of name and value: a btree cannot hold values over ~2.7 kB
);
create unique index if not exists parameter_parameter_hash on astra.parameter (parameter_hash);
create index if not exists parameter_parameter_name on astra.parameter (parameter_name);

create table if not exists astra.task_parameter (
    task_pk bigint not null references astra.task (pk) on delete cascade,
    parameter_pk bigint not null references astra.parameter (pk),
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
