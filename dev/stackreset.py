"""Empties one suite's streams, generations and cache keys on the shared local stack.

Used by bench/harness.py and dev/faults.py: each names its own streams, generation prefixes
and key prefixes, so a reset never touches another suite's (or a test's) data.
"""


async def reset(nats_url, neo4j_uri, valkey_url, streams, pointer_suffix, gen_prefixes, key_prefixes):
    """Deletes the streams, the generation pointers whose id ends with `pointer_suffix`, every
    node whose `gen` starts with one of `gen_prefixes`, and the Valkey keys under
    `key_prefixes`. Returns the Neo4j and Valkey versions (for benchmark records)."""
    import nats
    import redis.asyncio as aioredis
    from neo4j import AsyncGraphDatabase

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    for s in streams:
        try:
            await js.delete_stream(s)
        except Exception as e:
            if "not found" not in str(e).lower():
                raise
    await nc.close()
    driver = AsyncGraphDatabase.driver(neo4j_uri, auth=None)
    async with driver.session() as s:
        await (await s.run("MATCH (p:GenerationPointer) WHERE p.id ENDS WITH $p DETACH DELETE p",
                           p=pointer_suffix)).consume()
        # Operator decisions and lifts belong to no generation but to a stream's positions
        # (D59): streams created anew reuse those positions, so their decisions go with them.
        await (await s.run("MATCH (n) WHERE (n:Ruling OR n:BlockLift) AND n.stream IN $streams DETACH DELETE n",
                           streams=list(streams))).consume()
        await (await s.run("MATCH (f:BlockFence) WHERE any(st IN $streams WHERE f.id CONTAINS ':' + st + ':') "
                           "DETACH DELETE f", streams=list(streams))).consume()
        while True:
            r = await s.run(
                "MATCH (n) WHERE any(p IN $prefixes WHERE n.gen STARTS WITH p) "
                "WITH n LIMIT 20000 DETACH DELETE n RETURN count(*) AS c",
                prefixes=list(gen_prefixes),
            )
            if (await r.single())["c"] == 0:
                break
        r = await s.run("CALL dbms.components() YIELD versions, edition")
        rec = await r.single()
        versions = {"neo4j": f"{rec['versions'][0]} {rec['edition']}"}
    await driver.close()
    cache = aioredis.from_url(valkey_url)
    for prefix in key_prefixes:
        async for k in cache.scan_iter(match=prefix + "*", count=1000):
            await cache.delete(k)
    info = await cache.info("server")
    versions["valkey"] = info.get("valkey_version", info.get("redis_version"))
    await cache.aclose()
    return versions
