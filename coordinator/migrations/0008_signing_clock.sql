-- Version 8: the floor of the signing sequence clock. Every signed document (job, activation)
-- carries `seq = max(now in µs, last + 1)`; agents refuse one whose `seq` is not above the last
-- they accepted. The coordinator writes here, every second, a floor 60 s above the last number
-- it issued, and starts its clock above the floor: a restart (even after a crash, or with a
-- clock stepped back by less than a minute) continues above every number issued before. One
-- row. Portable SQL, as 0001.
CREATE TABLE signing_clock (
    id BIGINT PRIMARY KEY,
    floor_us BIGINT NOT NULL
);
INSERT INTO signing_clock (id, floor_us) VALUES (1, 0);
