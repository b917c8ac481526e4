//! What kube-runtime's `watcher::Event` lacks: changing the type of the object it carries.

use kube::runtime::watcher::Event;

/// `event` with its object (if it has one) turned into a `B` by `f`.
pub fn map<A, B>(event: Event<A>, f: impl FnOnce(A) -> B) -> Event<B> {
    match event {
        Event::Apply(o) => Event::Apply(f(o)),
        Event::Delete(o) => Event::Delete(f(o)),
        Event::InitApply(o) => Event::InitApply(f(o)),
        Event::Init => Event::Init,
        Event::InitDone => Event::InitDone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_mapped_and_list_bounds_kept() {
        let len = |s: &str| s.len();
        assert!(matches!(map(Event::Apply("ab"), len), Event::Apply(2)));
        assert!(matches!(map(Event::Delete("abc"), len), Event::Delete(3)));
        assert!(matches!(map(Event::InitApply("a"), len), Event::InitApply(1)));
        assert!(matches!(map(Event::<&str>::Init, len), Event::Init));
        assert!(matches!(map(Event::<&str>::InitDone, len), Event::InitDone));
    }
}
