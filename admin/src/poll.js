// Runs `task` now and then `interval` ms after each run finishes (never two
// at once, so a slow node never piles requests up). Returns the function
// that stops it.

export function poll(interval, task) {
  let stopped = false;
  let timer = null;
  const run = async () => {
    if (stopped) return;
    try {
      await task();
    } finally {
      if (!stopped) timer = setTimeout(run, interval);
    }
  };
  run();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
